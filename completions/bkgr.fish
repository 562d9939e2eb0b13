complete -c bkgr -s C -l dir -d 'Where to look for the project: the nearest cave.yaml from DIR up [default: the current directory]' -r -F
complete -c bkgr -l socket -d 'The agent\'s unix socket' -r -F
complete -c bkgr -l cpus -d 'CPU limit in CPUs, e.g. 0.5 [default: cave.yaml\'s limits.cpus, else 1]' -r
complete -c bkgr -l memory -d 'Memory limit, swap included, e.g. 1.5GiB [default: cave.yaml\'s limits.memory, else 512MiB]' -r
complete -c bkgr -l timeout -d 'Wall-clock limit of the run, e.g. 1m30s [default: cave.yaml\'s limits.timeout, else 60s]' -r
complete -c bkgr -l disk -d 'Disk limit of the sandbox, e.g. 1GiB; a disk grown by it keeps its size [default: cave.yaml\'s limits.disk, else 500MiB]' -r
complete -c bkgr -s d -l detach -d 'Leave the run(s) going under the agent and return at once (`bkg logs NAME -f` follows)'
complete -c bkgr -l allow-outside -d 'Allow volumes whose host path is outside the project'
complete -c bkgr -s h -l help -d 'Print help'
complete -c bkgr -s V -l version -d 'Print version'
