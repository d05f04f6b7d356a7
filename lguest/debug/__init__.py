"""Seeing inside a running Guest: the gdb stub, its monitor commands, the timeline, --stats=json."""
