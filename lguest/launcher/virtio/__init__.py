"""virtio 1.0 devices over PCI: the transport, the split virtqueues, and the devices."""
