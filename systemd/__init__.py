"""The systemd unit, socket, sysusers.d and tmpfiles.d files, shipped as package data
(``execgated install-systemd`` writes them out)."""
