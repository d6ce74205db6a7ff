"""Example policies, shipped as package data (``execgated install-systemd`` copies them
to /usr/share/execgate/policies)."""
