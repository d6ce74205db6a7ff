"""The embedded default policy: what ``execgated serve`` runs with no ``--config``.

Safe to start on any machine: deny by default, a small read-only allowlist, a jail in
``./workspace`` (created if missing), loopback only, and a local token (``serve`` generates
it into ``EXECGATE_LOCAL_TOKEN``) so that other users of the machine cannot call it.
"""

DEFAULT_POLICY = """\
version: "2"
sandbox:
  # Job cgroups need root (or a delegated subtree); on a developer's machine the job is
  # still bounded by its pid namespace, rlimits and Landlock. `execgated doctor` tells.
  cgroup: optional
tools:
  execute_command:
    type: command
    description: Read-only inspection commands inside ./workspace
    working_directory: ./workspace
    max_execution_time: 30s
    deny_by_default: true
    allowed_commands: [ls, cat, head, tail, wc, grep, sort, uniq, diff, stat, file,
                       echo, "true", "false", pwd, date]
  read_file:
    type: function
    working_directory: ./workspace
  list_directory:
    type: function
    working_directory: ./workspace
  grep_search:
    type: function
    working_directory: ./workspace
agents:
  default:
    visibility: public
    tools: [execute_command, read_file, list_directory, grep_search]
server:
  listen: ["127.0.0.1:7878"]
  auth:
    enabled: true
    require_auth: true
    excluded_paths: [/health]
    api_keys:
      - {name: local-token, key: "${EXECGATE_LOCAL_TOKEN}"}
logger:
  level: info
  format: text
"""

DEFAULT_TARGET = "127.0.0.1:7878"
"""The embedded default's address, also the client's default target."""
