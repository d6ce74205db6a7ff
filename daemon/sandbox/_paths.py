"""Paths the sandbox grants by default (a plain module: the helper imports it too)."""

DEFAULT_READ_PATHS = (
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt",
    "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
    "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/resolv.conf",
    "/etc/localtime", "/etc/timezone", "/etc/ssl", "/etc/ca-certificates", "/etc/os-release",
    "/etc/debian_version", "/etc/mime.types", "/etc/gitconfig", "/etc/inputrc",
    "/etc/terminfo", "/etc/protocols", "/etc/services", "/etc/magic", "/etc/python3",
    "/etc/python3.11", "/proc", "/dev/zero", "/dev/random", "/dev/urandom",
    "/sys/devices/system/cpu",
)
"""What commands may read and execute besides their jail: the system's programs and
libraries, and the handful of /etc files they need. Not /etc as a whole (the daemon's own
configuration and keys live there), not /root, /home, /var or other tools' jails."""
