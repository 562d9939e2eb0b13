# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_bkg_global_optspecs
    string join \n socket= remote= cacert= h/help V/version
end

function __fish_bkg_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_bkg_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_bkg_using_subcommand
    set -l cmd (__fish_bkg_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c bkg -n "__fish_bkg_needs_command" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_needs_command" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_needs_command" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_needs_command" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_needs_command" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "exe" -d 'Run a script once in a temporary sandbox and return its output and exit code'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "agent" -d 'Start, stop or inspect the local agent'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "init" -d 'Write a cave.yaml and the .bkg/ state folder (asks on a terminal; flags and defaults otherwise)'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "add" -d 'Add a sandbox to cave.yaml, keeping its comments and order'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "validate" -d 'Check a cave.yaml against its schema and list every problem'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "ls" -d 'List the project\'s persistent sandboxes (`--all`: every project\'s)'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "status" -d 'Show one persistent sandbox: state, last run, limits, disk'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "logs" -d 'Print the output of a sandbox\'s latest run (`-f` follows it)'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "shell" -d 'Open an interactive shell (or run a command) in a persistent sandbox, on a terminal'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "cp" -d 'Copy files and directories into or out of a persistent sandbox (NAME:PATH, relative to its /workspace)'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "exec" -d 'Run code in a session of a persistent sandbox: its variables, imports and cwd stay from one execution to the next'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "repl" -d 'An interactive Python or Node prompt in a session of a persistent sandbox, with history'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "stop" -d 'Stop the run going on in one or more sandboxes (`--all`: every sandbox of the project)'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "rm" -d 'Remove sandboxes: their workspace, logs and their entry in cave.yaml'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "runs" -d 'The history of runs: temporary and persistent, with their accounting'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "audit" -d 'Verify or follow the agent\'s signed audit log'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "sync" -d 'The sync of the agent\'s events to the shared bkg_db'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "db" -d 'The shared bkg_db itself'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "login" -d 'Keep an API key for a remote agent (--remote): log in with a password, or give a key'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "logout" -d 'Forget the API key kept for a remote agent (--remote)'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "keys" -d 'Create, list, rotate and revoke API keys'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "users" -d 'Add, list and remove the users who log in with a password (admins)'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "envs" -d 'The Python environments the agent built for runs\' packages: list, prune'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "secrets" -d 'Secrets runs get as environment variables (`bkg exe --secret NAME`): set, list, remove'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "watch" -d 'Follow the changes to runs, sandboxes, keys and the audit log as they happen'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "ui" -d 'Open the agent\'s Web UI: print (or --open) a URL that logs in once'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "version" -d 'The versions of bkg and of the agent, their commits and build dates, the agent\'s protections'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "doctor" -d 'Check this host and its agent: each piece passes, warns or fails, with the fix'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "completions" -d 'Print the shell completion script for bash, zsh, fish, elvish or powershell'
complete -c bkg -n "__fish_bkg_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand exe" -s c -l code -d 'Run this code instead of a file (needs --type); the arguments after it are the code\'s (after `--` when they look like bkg\'s flags)' -r
complete -c bkg -n "__fish_bkg_using_subcommand exe" -s t -l type -d 'The language: python or node [default: from the file extension]' -r -f -a "python\t''
node\t''"
complete -c bkg -n "__fish_bkg_using_subcommand exe" -l cpus -d 'CPU limit in CPUs, e.g. 0.5 [default: 1]' -r
complete -c bkg -n "__fish_bkg_using_subcommand exe" -l memory -d 'Memory limit, swap included, e.g. 256MiB or 1.5GiB [default: 512MiB]' -r
complete -c bkg -n "__fish_bkg_using_subcommand exe" -l timeout -d 'Wall-clock limit of a run, e.g. 10s or 1m30s [default: 60s]' -r
complete -c bkg -n "__fish_bkg_using_subcommand exe" -l disk -d 'Disk limit for /workspace and /tmp together, e.g. 1GiB [default: 500MiB]' -r
complete -c bkg -n "__fish_bkg_using_subcommand exe" -s e -l env -d 'Set a variable in the sandbox; a bare NAME passes the host\'s value (repeatable)' -r
complete -c bkg -n "__fish_bkg_using_subcommand exe" -l env-file -d 'Read variables from a file of KEY=VALUE lines (repeatable; -e wins)' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand exe" -s f -l file -d 'Copy a host file into the sandbox, to /workspace/NAME or DEST; a directory\'s contents go to /workspace (or DEST), beside the script (repeatable)' -r
complete -c bkg -n "__fish_bkg_using_subcommand exe" -l keep -d 'Keep this file or directory under /workspace as the run\'s files, besides /workspace/out, which is always kept (repeatable; `bkg runs files ID` fetches them)' -r
complete -c bkg -n "__fish_bkg_using_subcommand exe" -l net -d 'Let the script reach these hosts through its proxy (comma-separated, repeatable); host.bkg.internal:PORT is this machine\'s loopback [default: no network at all]' -r
complete -c bkg -n "__fish_bkg_using_subcommand exe" -s p -l publish -d 'Forward a host port into the sandbox while the script runs (repeatable; loopback unless ADDRESS is given)' -r
complete -c bkg -n "__fish_bkg_using_subcommand exe" -l with -d 'A Python package the script needs, as a requirement (`numpy`, `requests>=2`); installed once per distinct set and reused (repeatable)' -r
complete -c bkg -n "__fish_bkg_using_subcommand exe" -s r -l requirements -d 'The requirements file to install from, besides the script\'s `# /// script` block [default: requirements.txt beside the script, if any and the script has no such block]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand exe" -l secret -d 'Give the script a secret (`bkg secrets set NAME`) as the variable NAME (repeatable)' -r
complete -c bkg -n "__fish_bkg_using_subcommand exe" -s o -l output -d 'Bring back what the run wrote to /workspace/out/ into this host directory (made if missing)' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand exe" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand exe" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand exe" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand exe" -l json -d 'Print one JSON object with the result and accounting instead of the output'
complete -c bkg -n "__fish_bkg_using_subcommand exe" -s T -l tty -d 'Run the script on a pseudo-terminal: raw keys, colours, resize and Ctrl-C reach it (needs a terminal)'
complete -c bkg -n "__fish_bkg_using_subcommand exe" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand exe" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and not __fish_seen_subcommand_from start stop status help" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand agent; and not __fish_seen_subcommand_from start stop status help" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand agent; and not __fish_seen_subcommand_from start stop status help" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand agent; and not __fish_seen_subcommand_from start stop status help" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and not __fish_seen_subcommand_from start stop status help" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and not __fish_seen_subcommand_from start stop status help" -f -a "start" -d 'Start the agent in the background (needs root)'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and not __fish_seen_subcommand_from start stop status help" -f -a "stop" -d 'Stop the agent and wait until it has exited: runs going on get 5 s, then are killed'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and not __fish_seen_subcommand_from start stop status help" -f -a "status" -d 'Show whether the agent runs, and its limits and load. Exit 0 running, 1 not running, 125 it does not answer'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and not __fish_seen_subcommand_from start stop status help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from start" -l state-dir -d 'The agent\'s state directory [default: /var/lib/bkg as root]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from start" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from start" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from start" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from start" -l foreground -d 'Stay in the foreground and log to stderr'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from start" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from start" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from stop" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from stop" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from stop" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from stop" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from stop" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from status" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from status" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from status" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from status" -l json -d 'Print JSON'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from status" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from help" -f -a "start" -d 'Start the agent in the background (needs root)'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from help" -f -a "stop" -d 'Stop the agent and wait until it has exited: runs going on get 5 s, then are killed'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from help" -f -a "status" -d 'Show whether the agent runs, and its limits and load. Exit 0 running, 1 not running, 125 it does not answer'
complete -c bkg -n "__fish_bkg_using_subcommand agent; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand init" -l namespace -d 'The namespace [default: default]' -r
complete -c bkg -n "__fish_bkg_using_subcommand init" -l sandbox -d 'Add a first sandbox with this name [default: none without prompts]' -r
complete -c bkg -n "__fish_bkg_using_subcommand init" -s t -l type -d 'The first sandbox\'s type: python or node [default: python]' -r -f -a "python\t''
node\t''"
complete -c bkg -n "__fish_bkg_using_subcommand init" -l start -d 'The first sandbox\'s start script [default: python main.py or node main.js]' -r
complete -c bkg -n "__fish_bkg_using_subcommand init" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand init" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand init" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand init" -s y -l yes -d 'Never ask: use the flags and defaults (also the case without a terminal or with CI set)'
complete -c bkg -n "__fish_bkg_using_subcommand init" -l force -d 'Overwrite an existing cave.yaml, keeping it as cave.yaml.bak'
complete -c bkg -n "__fish_bkg_using_subcommand init" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand init" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand add" -s t -l type -d 'The language: python or node' -r -f -a "python\t''
node\t''"
complete -c bkg -n "__fish_bkg_using_subcommand add" -s s -l script -d 'A script, NAME=COMMAND (repeatable) [default: start=python main.py or node main.js]' -r
complete -c bkg -n "__fish_bkg_using_subcommand add" -l cpus -d 'CPU limit in CPUs, e.g. 0.5 [default: 1]' -r
complete -c bkg -n "__fish_bkg_using_subcommand add" -l memory -d 'Memory limit, swap included, e.g. 256MiB or 1.5GiB [default: 512MiB]' -r
complete -c bkg -n "__fish_bkg_using_subcommand add" -l timeout -d 'Wall-clock limit of a run, e.g. 10s or 1m30s [default: 60s]' -r
complete -c bkg -n "__fish_bkg_using_subcommand add" -l disk -d 'Disk limit for /workspace and /tmp together, e.g. 1GiB [default: 500MiB]' -r
complete -c bkg -n "__fish_bkg_using_subcommand add" -s e -l env -d 'Set an environment variable in the sandbox (repeatable)' -r
complete -c bkg -n "__fish_bkg_using_subcommand add" -l volume -d 'Mount a project folder, read-only unless :rw (repeatable)' -r
complete -c bkg -n "__fish_bkg_using_subcommand add" -l cave -d 'The cave.yaml to edit [default: the project\'s]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand add" -l file -d 'The old name of --cave (`bkg exe --file` copies a file in); warns' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand add" -s C -l dir -d 'Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand add" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand add" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand add" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand add" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand add" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand validate" -s C -l dir -d 'Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand validate" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand validate" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand validate" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand validate" -l json -d 'Print only one JSON object: {"file", "valid", "errors": [{"line", "pointer", "message"}]}'
complete -c bkg -n "__fish_bkg_using_subcommand validate" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand validate" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand ls" -s C -l dir -d 'Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand ls" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand ls" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand ls" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand ls" -l all -d 'Every sandbox the agent knows, of every project'
complete -c bkg -n "__fish_bkg_using_subcommand ls" -l json -d 'Print JSON: an array of sandboxes'
complete -c bkg -n "__fish_bkg_using_subcommand ls" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand ls" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand status" -s C -l dir -d 'Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand status" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand status" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand status" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand status" -l json -d 'Print JSON'
complete -c bkg -n "__fish_bkg_using_subcommand status" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand status" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand logs" -s C -l dir -d 'Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand logs" -s n -l tail -d 'Start with the last N lines of the output' -r
complete -c bkg -n "__fish_bkg_using_subcommand logs" -l run -d 'Print the output of this earlier run (one of the last 20; `bkg runs ls --sandbox NAME` lists them), not the newest\'s' -r
complete -c bkg -n "__fish_bkg_using_subcommand logs" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand logs" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand logs" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand logs" -s f -l follow -d 'Keep printing while the run goes on'
complete -c bkg -n "__fish_bkg_using_subcommand logs" -s t -l timestamps -d 'Lead each line with the time bkg read it (RFC 3339, UTC): when it was written, for lines that arrive with -f'
complete -c bkg -n "__fish_bkg_using_subcommand logs" -l policy -d 'List what the sandbox refused its recent runs (system calls, limits) instead of the output'
complete -c bkg -n "__fish_bkg_using_subcommand logs" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand logs" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand shell" -s C -l dir -d 'Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand shell" -s c -l command -d 'Run this command line (with /bin/sh -c) on the terminal instead of an interactive shell' -r
complete -c bkg -n "__fish_bkg_using_subcommand shell" -s e -l env -d 'Set a variable in the sandbox; a bare NAME passes the host\'s value (repeatable)' -r
complete -c bkg -n "__fish_bkg_using_subcommand shell" -l timeout -d 'How long the shell may last, e.g. 30m [default: the sandbox\'s timeout]' -r
complete -c bkg -n "__fish_bkg_using_subcommand shell" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand shell" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand shell" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand shell" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand shell" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand cp" -s C -l dir -d 'Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand cp" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand cp" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand cp" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand cp" -l json -d 'Print the copy\'s JSON answer ({"path", "files", "bytes", "links"})'
complete -c bkg -n "__fish_bkg_using_subcommand cp" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand cp" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand exec" -s s -l session -d 'The session to run in; made on first use' -r
complete -c bkg -n "__fish_bkg_using_subcommand exec" -s c -l code -d 'The code to run [default: read from stdin]' -r
complete -c bkg -n "__fish_bkg_using_subcommand exec" -s t -l type -d 'The session\'s language when it is made: python or node [default: the sandbox\'s]' -r -f -a "python\t''
node\t''"
complete -c bkg -n "__fish_bkg_using_subcommand exec" -s C -l dir -d 'Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand exec" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand exec" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand exec" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand exec" -l interrupt -d 'Interrupt what the session is running instead of running code'
complete -c bkg -n "__fish_bkg_using_subcommand exec" -l restart -d 'Restart the session\'s interpreter (its state is lost) instead of running code'
complete -c bkg -n "__fish_bkg_using_subcommand exec" -l json -d 'Print each event of the execution as a line of JSON instead of the output'
complete -c bkg -n "__fish_bkg_using_subcommand exec" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand exec" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand repl" -s s -l session -d 'The session to use; made on first use' -r
complete -c bkg -n "__fish_bkg_using_subcommand repl" -s t -l type -d 'The session\'s language when it is made: python or node [default: the sandbox\'s]' -r -f -a "python\t''
node\t''"
complete -c bkg -n "__fish_bkg_using_subcommand repl" -s C -l dir -d 'Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand repl" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand repl" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand repl" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand repl" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand repl" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand stop" -s C -l dir -d 'Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand stop" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand stop" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand stop" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand stop" -l all -d 'Stop every sandbox of the project that has a run going on'
complete -c bkg -n "__fish_bkg_using_subcommand stop" -l json -d 'Print JSON: one object per sandbox, in an array'
complete -c bkg -n "__fish_bkg_using_subcommand stop" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand stop" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand rm" -s C -l dir -d 'Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand rm" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand rm" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand rm" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand rm" -l force -d 'Do not ask (required when stdin is not a terminal)'
complete -c bkg -n "__fish_bkg_using_subcommand rm" -l json -d 'Print JSON'
complete -c bkg -n "__fish_bkg_using_subcommand rm" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand rm" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and not __fish_seen_subcommand_from ls show cancel files help" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand runs; and not __fish_seen_subcommand_from ls show cancel files help" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand runs; and not __fish_seen_subcommand_from ls show cancel files help" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand runs; and not __fish_seen_subcommand_from ls show cancel files help" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and not __fish_seen_subcommand_from ls show cancel files help" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and not __fish_seen_subcommand_from ls show cancel files help" -f -a "ls" -d 'The newest runs, newest first: id, type, start, outcome, wall and CPU time, peak memory'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and not __fish_seen_subcommand_from ls show cancel files help" -f -a "show" -d 'One run with its limits and accounting'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and not __fish_seen_subcommand_from ls show cancel files help" -f -a "cancel" -d 'Ends a queued or running run, as Ctrl-C on its `bkg exe` does: its code gets SIGTERM, and SIGKILL after 5 s. Prints the run as recorded once it has ended'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and not __fish_seen_subcommand_from ls show cancel files help" -f -a "files" -d 'The files a run kept (/workspace/out, --keep paths, long stdout/stderr): listed, or fetched into a directory'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and not __fish_seen_subcommand_from ls show cancel files help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from ls" -s n -l limit -d 'How many runs to list, 1 to 1000' -r
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from ls" -l sandbox -d 'Only the runs of this persistent sandbox: its name (this project\'s first) or its id' -r
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from ls" -l before -d 'The runs older than this one: the next page after a listing\'s last run' -r
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from ls" -s C -l dir -d 'Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from ls" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from ls" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from ls" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from ls" -l json -d 'Print JSON: an array of runs'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from ls" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from ls" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from show" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from show" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from show" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from show" -l json -d 'Print JSON'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from show" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from cancel" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from cancel" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from cancel" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from cancel" -l json -d 'Print JSON: the run, as `bkg runs show --json` prints it'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from cancel" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from cancel" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from files" -s o -l output -d 'Fetch the files into this directory (made if missing; existing files are never overwritten), each checked against its SHA-256' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from files" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from files" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from files" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from files" -l json -d 'Print JSON: {"run_id", "files": [{"path", "kind", "bytes", "sha256"}]}'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from files" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from files" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from help" -f -a "ls" -d 'The newest runs, newest first: id, type, start, outcome, wall and CPU time, peak memory'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from help" -f -a "show" -d 'One run with its limits and accounting'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from help" -f -a "cancel" -d 'Ends a queued or running run, as Ctrl-C on its `bkg exe` does: its code gets SIGTERM, and SIGKILL after 5 s. Prints the run as recorded once it has ended'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from help" -f -a "files" -d 'The files a run kept (/workspace/out, --keep paths, long stdout/stderr): listed, or fetched into a directory'
complete -c bkg -n "__fish_bkg_using_subcommand runs; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand audit; and not __fish_seen_subcommand_from verify tail help" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand audit; and not __fish_seen_subcommand_from verify tail help" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand audit; and not __fish_seen_subcommand_from verify tail help" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand audit; and not __fish_seen_subcommand_from verify tail help" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand audit; and not __fish_seen_subcommand_from verify tail help" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand audit; and not __fish_seen_subcommand_from verify tail help" -f -a "verify" -d 'Check the hash chain and signatures; name the first bad line. Exit 0 intact, 1 tampered'
complete -c bkg -n "__fish_bkg_using_subcommand audit; and not __fish_seen_subcommand_from verify tail help" -f -a "tail" -d 'Print the newest records (`-f` follows)'
complete -c bkg -n "__fish_bkg_using_subcommand audit; and not __fish_seen_subcommand_from verify tail help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from verify" -l key -d 'The agent\'s public key: 64 hex digits or a file holding them [default: audit.pub beside the log\'s directory]' -r
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from verify" -l state-dir -d 'The agent\'s state directory [default: the running agent\'s, else /var/lib/bkg as root]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from verify" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from verify" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from verify" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from verify" -l json -d 'Print one JSON object on stdout instead of a line on stderr'
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from verify" -l from-db -d 'Verify the chain as the shared bkg_db holds it (read through the agent), not the local files'
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from verify" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from verify" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from tail" -s n -l lines -d 'How many of the last records to print' -r
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from tail" -l state-dir -d 'The agent\'s state directory [default: the running agent\'s, else /var/lib/bkg as root]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from tail" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from tail" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from tail" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from tail" -s f -l follow -d 'Keep printing records as they are written, across file rotation'
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from tail" -l json -d 'Print the records\' JSON lines as written'
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from tail" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from tail" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "verify" -d 'Check the hash chain and signatures; name the first bad line. Exit 0 intact, 1 tampered'
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "tail" -d 'Print the newest records (`-f` follows)'
complete -c bkg -n "__fish_bkg_using_subcommand audit; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand sync; and not __fish_seen_subcommand_from status retry help" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand sync; and not __fish_seen_subcommand_from status retry help" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand sync; and not __fish_seen_subcommand_from status retry help" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand sync; and not __fish_seen_subcommand_from status retry help" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand sync; and not __fish_seen_subcommand_from status retry help" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand sync; and not __fish_seen_subcommand_from status retry help" -f -a "status" -d 'Backlog, parked events, last success and last error of the sync to bkg_db. Exit 0 healthy or not configured, 1 when the last attempt failed or events are parked'
complete -c bkg -n "__fish_bkg_using_subcommand sync; and not __fish_seen_subcommand_from status retry help" -f -a "retry" -d 'Ship parked events again (all of them, or the one with sequence number SEQ), once what bkg_db refused is fixed'
complete -c bkg -n "__fish_bkg_using_subcommand sync; and not __fish_seen_subcommand_from status retry help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand sync; and __fish_seen_subcommand_from status" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand sync; and __fish_seen_subcommand_from status" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand sync; and __fish_seen_subcommand_from status" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand sync; and __fish_seen_subcommand_from status" -l json -d 'Print JSON'
complete -c bkg -n "__fish_bkg_using_subcommand sync; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand sync; and __fish_seen_subcommand_from status" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand sync; and __fish_seen_subcommand_from retry" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand sync; and __fish_seen_subcommand_from retry" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand sync; and __fish_seen_subcommand_from retry" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand sync; and __fish_seen_subcommand_from retry" -l json -d 'Print JSON'
complete -c bkg -n "__fish_bkg_using_subcommand sync; and __fish_seen_subcommand_from retry" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand sync; and __fish_seen_subcommand_from retry" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand sync; and __fish_seen_subcommand_from help" -f -a "status" -d 'Backlog, parked events, last success and last error of the sync to bkg_db. Exit 0 healthy or not configured, 1 when the last attempt failed or events are parked'
complete -c bkg -n "__fish_bkg_using_subcommand sync; and __fish_seen_subcommand_from help" -f -a "retry" -d 'Ship parked events again (all of them, or the one with sequence number SEQ), once what bkg_db refused is fixed'
complete -c bkg -n "__fish_bkg_using_subcommand sync; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand db; and not __fish_seen_subcommand_from migrate help" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand db; and not __fish_seen_subcommand_from migrate help" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand db; and not __fish_seen_subcommand_from migrate help" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand db; and not __fish_seen_subcommand_from migrate help" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand db; and not __fish_seen_subcommand_from migrate help" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand db; and not __fish_seen_subcommand_from migrate help" -f -a "migrate" -d 'Apply bkg_db\'s schema migrations now (the agent also applies them when it connects)'
complete -c bkg -n "__fish_bkg_using_subcommand db; and not __fish_seen_subcommand_from migrate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand db; and __fish_seen_subcommand_from migrate" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand db; and __fish_seen_subcommand_from migrate" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand db; and __fish_seen_subcommand_from migrate" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand db; and __fish_seen_subcommand_from migrate" -l json -d 'Print JSON'
complete -c bkg -n "__fish_bkg_using_subcommand db; and __fish_seen_subcommand_from migrate" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand db; and __fish_seen_subcommand_from migrate" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand db; and __fish_seen_subcommand_from help" -f -a "migrate" -d 'Apply bkg_db\'s schema migrations now (the agent also applies them when it connects)'
complete -c bkg -n "__fish_bkg_using_subcommand db; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand login" -l user -d 'Log in as this user; the password is read from stdin (asked for on a terminal)' -r
complete -c bkg -n "__fish_bkg_using_subcommand login" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand login" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand login" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand login" -l key-stdin -d 'Read an existing API key from stdin instead'
complete -c bkg -n "__fish_bkg_using_subcommand login" -l json -d 'Print what the agent says of the key as JSON'
complete -c bkg -n "__fish_bkg_using_subcommand login" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand login" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand logout" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand logout" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand logout" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand logout" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand logout" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and not __fish_seen_subcommand_from create ls rotate revoke rm help" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand keys; and not __fish_seen_subcommand_from create ls rotate revoke rm help" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand keys; and not __fish_seen_subcommand_from create ls rotate revoke rm help" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand keys; and not __fish_seen_subcommand_from create ls rotate revoke rm help" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and not __fish_seen_subcommand_from create ls rotate revoke rm help" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and not __fish_seen_subcommand_from create ls rotate revoke rm help" -f -a "create" -d 'Create a key and print it (it is shown only this once)'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and not __fish_seen_subcommand_from create ls rotate revoke rm help" -f -a "ls" -d 'List the keys you may manage (never their secrets)'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and not __fish_seen_subcommand_from create ls rotate revoke rm help" -f -a "rotate" -d 'Give a key a new secret and print it; the old one stops working at once'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and not __fish_seen_subcommand_from create ls rotate revoke rm help" -f -a "revoke" -d 'Revoke a key: it is refused from its next request on'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and not __fish_seen_subcommand_from create ls rotate revoke rm help" -f -a "rm" -d 'Delete a key for good: refused at once and gone from `bkg keys ls` (a revoked one stays listed); the audit log keeps its history'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and not __fish_seen_subcommand_from create ls rotate revoke rm help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from create" -l role -d 'admin, namespace, session or model-access' -r
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from create" -l namespace -d 'The namespace the key is confined to (every role but admin)' -r
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from create" -l name -d 'A label for people' -r
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from create" -l ttl -d 'Lifetime, e.g. 12h, 7d [default: the role\'s]' -r
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from create" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from create" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from create" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from create" -l json -d 'Print the key and its description as JSON'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from create" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from ls" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from ls" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from ls" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from ls" -l json
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from ls" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from ls" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from rotate" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from rotate" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from rotate" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from rotate" -l json
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from rotate" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from rotate" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from revoke" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from revoke" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from revoke" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from revoke" -l json
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from revoke" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from revoke" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from rm" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from rm" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from rm" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from rm" -l json
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from rm" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from rm" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from help" -f -a "create" -d 'Create a key and print it (it is shown only this once)'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from help" -f -a "ls" -d 'List the keys you may manage (never their secrets)'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from help" -f -a "rotate" -d 'Give a key a new secret and print it; the old one stops working at once'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from help" -f -a "revoke" -d 'Revoke a key: it is refused from its next request on'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from help" -f -a "rm" -d 'Delete a key for good: refused at once and gone from `bkg keys ls` (a revoked one stays listed); the audit log keeps its history'
complete -c bkg -n "__fish_bkg_using_subcommand keys; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand users; and not __fish_seen_subcommand_from add ls rm help" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand users; and not __fish_seen_subcommand_from add ls rm help" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand users; and not __fish_seen_subcommand_from add ls rm help" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand users; and not __fish_seen_subcommand_from add ls rm help" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand users; and not __fish_seen_subcommand_from add ls rm help" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand users; and not __fish_seen_subcommand_from add ls rm help" -f -a "add" -d 'Add a user who logs in (`bkg login --user NAME`) to one namespace; the password is read from stdin (one trailing newline is dropped), or asked for, not shown, on a terminal'
complete -c bkg -n "__fish_bkg_using_subcommand users; and not __fish_seen_subcommand_from add ls rm help" -f -a "ls" -d 'List the users (never their passwords)'
complete -c bkg -n "__fish_bkg_using_subcommand users; and not __fish_seen_subcommand_from add ls rm help" -f -a "rm" -d 'Remove a user: their password goes, and every key of theirs still active is revoked'
complete -c bkg -n "__fish_bkg_using_subcommand users; and not __fish_seen_subcommand_from add ls rm help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from add" -l namespace -d 'The namespace the user\'s session keys are confined to' -r
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from add" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from add" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from add" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from add" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from ls" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from ls" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from ls" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from ls" -l json -d 'Print the users as a JSON array'
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from ls" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from ls" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from rm" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from rm" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from rm" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from rm" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from rm" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from help" -f -a "add" -d 'Add a user who logs in (`bkg login --user NAME`) to one namespace; the password is read from stdin (one trailing newline is dropped), or asked for, not shown, on a terminal'
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from help" -f -a "ls" -d 'List the users (never their passwords)'
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from help" -f -a "rm" -d 'Remove a user: their password goes, and every key of theirs still active is revoked'
complete -c bkg -n "__fish_bkg_using_subcommand users; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand envs; and not __fish_seen_subcommand_from ls prune help" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand envs; and not __fish_seen_subcommand_from ls prune help" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand envs; and not __fish_seen_subcommand_from ls prune help" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand envs; and not __fish_seen_subcommand_from ls prune help" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand envs; and not __fish_seen_subcommand_from ls prune help" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand envs; and not __fish_seen_subcommand_from ls prune help" -f -a "ls" -d 'List the environments: id, size, last use and packages'
complete -c bkg -n "__fish_bkg_using_subcommand envs; and not __fish_seen_subcommand_from ls prune help" -f -a "prune" -d 'Remove environments no run is using (admins); a run that needs one builds it again'
complete -c bkg -n "__fish_bkg_using_subcommand envs; and not __fish_seen_subcommand_from ls prune help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand envs; and __fish_seen_subcommand_from ls" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand envs; and __fish_seen_subcommand_from ls" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand envs; and __fish_seen_subcommand_from ls" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand envs; and __fish_seen_subcommand_from ls" -l json -d 'Print the environments as a JSON array'
complete -c bkg -n "__fish_bkg_using_subcommand envs; and __fish_seen_subcommand_from ls" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand envs; and __fish_seen_subcommand_from ls" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand envs; and __fish_seen_subcommand_from prune" -l unused-for -d 'Only those no run has used for this long, e.g. 7d' -r
complete -c bkg -n "__fish_bkg_using_subcommand envs; and __fish_seen_subcommand_from prune" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand envs; and __fish_seen_subcommand_from prune" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand envs; and __fish_seen_subcommand_from prune" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand envs; and __fish_seen_subcommand_from prune" -l json -d 'Print what was removed as JSON'
complete -c bkg -n "__fish_bkg_using_subcommand envs; and __fish_seen_subcommand_from prune" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand envs; and __fish_seen_subcommand_from prune" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand envs; and __fish_seen_subcommand_from help" -f -a "ls" -d 'List the environments: id, size, last use and packages'
complete -c bkg -n "__fish_bkg_using_subcommand envs; and __fish_seen_subcommand_from help" -f -a "prune" -d 'Remove environments no run is using (admins); a run that needs one builds it again'
complete -c bkg -n "__fish_bkg_using_subcommand envs; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and not __fish_seen_subcommand_from set ls rm help" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and not __fish_seen_subcommand_from set ls rm help" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and not __fish_seen_subcommand_from set ls rm help" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and not __fish_seen_subcommand_from set ls rm help" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and not __fish_seen_subcommand_from set ls rm help" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and not __fish_seen_subcommand_from set ls rm help" -f -a "set" -d 'Set a secret; its value is read from stdin (one trailing newline is dropped)'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and not __fish_seen_subcommand_from set ls rm help" -f -a "ls" -d 'List the secrets\' names (never their values)'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and not __fish_seen_subcommand_from set ls rm help" -f -a "rm" -d 'Remove a secret'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and not __fish_seen_subcommand_from set ls rm help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from set" -l namespace -d 'The namespace [default: your key\'s, or `default`]' -r
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from set" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from set" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from set" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from set" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from set" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from ls" -l namespace -d 'The namespace [default: your key\'s, or `default`]' -r
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from ls" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from ls" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from ls" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from ls" -l json -d 'Print the names as a JSON array'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from ls" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from ls" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from rm" -l namespace -d 'The namespace [default: your key\'s, or `default`]' -r
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from rm" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from rm" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from rm" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from rm" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from rm" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from help" -f -a "set" -d 'Set a secret; its value is read from stdin (one trailing newline is dropped)'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from help" -f -a "ls" -d 'List the secrets\' names (never their values)'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from help" -f -a "rm" -d 'Remove a secret'
complete -c bkg -n "__fish_bkg_using_subcommand secrets; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand watch" -l namespace -d 'Only this namespace\'s changes (an admin\'s filter; a namespace key sees only its own)' -r
complete -c bkg -n "__fish_bkg_using_subcommand watch" -l kinds -d 'Only these kinds of change, comma-separated: runs, sandboxes, keys, audit [default: all]' -r
complete -c bkg -n "__fish_bkg_using_subcommand watch" -l since -d 'Start after this position (a change\'s `position`, or what an ended stream said to resume from) [default: 0, from the start]' -r
complete -c bkg -n "__fish_bkg_using_subcommand watch" -l count -d 'Stop after this many changes' -r
complete -c bkg -n "__fish_bkg_using_subcommand watch" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand watch" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand watch" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand watch" -l json -d 'Print each change as one JSON object per line'
complete -c bkg -n "__fish_bkg_using_subcommand watch" -l no-follow -d 'Print the changes made so far and exit 0 instead of waiting for new ones'
complete -c bkg -n "__fish_bkg_using_subcommand watch" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand watch" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand ui" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand ui" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand ui" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand ui" -l open -d 'Open the URL in the desktop\'s browser (xdg-open) besides printing it'
complete -c bkg -n "__fish_bkg_using_subcommand ui" -l json -d 'Print JSON: the URL and whether a listener was started for it'
complete -c bkg -n "__fish_bkg_using_subcommand ui" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand ui" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand version" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand version" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand version" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand version" -l json -d 'Print JSON: {"cli": {...}, "agent": {...} or null}'
complete -c bkg -n "__fish_bkg_using_subcommand version" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand version" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand doctor" -l state-dir -d 'The agent\'s state directory [default: the running agent\'s, else BKG_STATE_DIR or the default]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand doctor" -l python -d 'The Python interpreter the agent is (or will be) started with [default: the agent\'s]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand doctor" -l node -d 'The Node.js interpreter the agent is (or will be) started with [default: the agent\'s]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand doctor" -l tls-cert -d 'The TLS certificate (PEM, leaf first) the agent serves on --listen: its expiry is checked' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand doctor" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand doctor" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand doctor" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand doctor" -l json -d 'Print the report as JSON: {"status", "host_level", "agent_level", "checks": [...]}'
complete -c bkg -n "__fish_bkg_using_subcommand doctor" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand doctor" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand completions" -l socket -d 'The agent\'s unix socket [default: /run/bkg/agent.sock]' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand completions" -l remote -d 'Talk to the agent at this URL over TCP (https://HOST:PORT, or http:// on loopback) with an API key instead of the socket' -r
complete -c bkg -n "__fish_bkg_using_subcommand completions" -l cacert -d 'Verify an https --remote agent against the CA certificates in this PEM file instead of the system\'s roots' -r -F
complete -c bkg -n "__fish_bkg_using_subcommand completions" -s h -l help -d 'Print help'
complete -c bkg -n "__fish_bkg_using_subcommand completions" -s V -l version -d 'Print version'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "exe" -d 'Run a script once in a temporary sandbox and return its output and exit code'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "agent" -d 'Start, stop or inspect the local agent'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "init" -d 'Write a cave.yaml and the .bkg/ state folder (asks on a terminal; flags and defaults otherwise)'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "add" -d 'Add a sandbox to cave.yaml, keeping its comments and order'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "validate" -d 'Check a cave.yaml against its schema and list every problem'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "ls" -d 'List the project\'s persistent sandboxes (`--all`: every project\'s)'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "status" -d 'Show one persistent sandbox: state, last run, limits, disk'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "logs" -d 'Print the output of a sandbox\'s latest run (`-f` follows it)'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "shell" -d 'Open an interactive shell (or run a command) in a persistent sandbox, on a terminal'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "cp" -d 'Copy files and directories into or out of a persistent sandbox (NAME:PATH, relative to its /workspace)'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "exec" -d 'Run code in a session of a persistent sandbox: its variables, imports and cwd stay from one execution to the next'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "repl" -d 'An interactive Python or Node prompt in a session of a persistent sandbox, with history'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "stop" -d 'Stop the run going on in one or more sandboxes (`--all`: every sandbox of the project)'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "rm" -d 'Remove sandboxes: their workspace, logs and their entry in cave.yaml'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "runs" -d 'The history of runs: temporary and persistent, with their accounting'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "audit" -d 'Verify or follow the agent\'s signed audit log'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "sync" -d 'The sync of the agent\'s events to the shared bkg_db'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "db" -d 'The shared bkg_db itself'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "login" -d 'Keep an API key for a remote agent (--remote): log in with a password, or give a key'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "logout" -d 'Forget the API key kept for a remote agent (--remote)'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "keys" -d 'Create, list, rotate and revoke API keys'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "users" -d 'Add, list and remove the users who log in with a password (admins)'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "envs" -d 'The Python environments the agent built for runs\' packages: list, prune'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "secrets" -d 'Secrets runs get as environment variables (`bkg exe --secret NAME`): set, list, remove'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "watch" -d 'Follow the changes to runs, sandboxes, keys and the audit log as they happen'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "ui" -d 'Open the agent\'s Web UI: print (or --open) a URL that logs in once'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "version" -d 'The versions of bkg and of the agent, their commits and build dates, the agent\'s protections'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "doctor" -d 'Check this host and its agent: each piece passes, warns or fails, with the fix'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "completions" -d 'Print the shell completion script for bash, zsh, fish, elvish or powershell'
complete -c bkg -n "__fish_bkg_using_subcommand help; and not __fish_seen_subcommand_from exe agent init add validate ls status logs shell cp exec repl stop rm runs audit sync db login logout keys users envs secrets watch ui version doctor completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from agent" -f -a "start" -d 'Start the agent in the background (needs root)'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from agent" -f -a "stop" -d 'Stop the agent and wait until it has exited: runs going on get 5 s, then are killed'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from agent" -f -a "status" -d 'Show whether the agent runs, and its limits and load. Exit 0 running, 1 not running, 125 it does not answer'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from runs" -f -a "ls" -d 'The newest runs, newest first: id, type, start, outcome, wall and CPU time, peak memory'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from runs" -f -a "show" -d 'One run with its limits and accounting'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from runs" -f -a "cancel" -d 'Ends a queued or running run, as Ctrl-C on its `bkg exe` does: its code gets SIGTERM, and SIGKILL after 5 s. Prints the run as recorded once it has ended'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from runs" -f -a "files" -d 'The files a run kept (/workspace/out, --keep paths, long stdout/stderr): listed, or fetched into a directory'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from audit" -f -a "verify" -d 'Check the hash chain and signatures; name the first bad line. Exit 0 intact, 1 tampered'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from audit" -f -a "tail" -d 'Print the newest records (`-f` follows)'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from sync" -f -a "status" -d 'Backlog, parked events, last success and last error of the sync to bkg_db. Exit 0 healthy or not configured, 1 when the last attempt failed or events are parked'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from sync" -f -a "retry" -d 'Ship parked events again (all of them, or the one with sequence number SEQ), once what bkg_db refused is fixed'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from db" -f -a "migrate" -d 'Apply bkg_db\'s schema migrations now (the agent also applies them when it connects)'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from keys" -f -a "create" -d 'Create a key and print it (it is shown only this once)'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from keys" -f -a "ls" -d 'List the keys you may manage (never their secrets)'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from keys" -f -a "rotate" -d 'Give a key a new secret and print it; the old one stops working at once'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from keys" -f -a "revoke" -d 'Revoke a key: it is refused from its next request on'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from keys" -f -a "rm" -d 'Delete a key for good: refused at once and gone from `bkg keys ls` (a revoked one stays listed); the audit log keeps its history'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from users" -f -a "add" -d 'Add a user who logs in (`bkg login --user NAME`) to one namespace; the password is read from stdin (one trailing newline is dropped), or asked for, not shown, on a terminal'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from users" -f -a "ls" -d 'List the users (never their passwords)'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from users" -f -a "rm" -d 'Remove a user: their password goes, and every key of theirs still active is revoked'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from envs" -f -a "ls" -d 'List the environments: id, size, last use and packages'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from envs" -f -a "prune" -d 'Remove environments no run is using (admins); a run that needs one builds it again'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from secrets" -f -a "set" -d 'Set a secret; its value is read from stdin (one trailing newline is dropped)'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from secrets" -f -a "ls" -d 'List the secrets\' names (never their values)'
complete -c bkg -n "__fish_bkg_using_subcommand help; and __fish_seen_subcommand_from secrets" -f -a "rm" -d 'Remove a secret'
