complete -c bkg-agent -l socket -d 'Unix socket to serve the API on (mode 0660, group --socket-group; 0600 without one)' -r -F
complete -c bkg-agent -l socket-group -d 'The socket\'s group: its members use bkg as themselves, each in a namespace of their own (--user-namespace). Default: `bkg` when that group exists, else none (root only)' -r
complete -c bkg-agent -l admin-group -d 'Members of this group are admins on the socket, like root' -r
complete -c bkg-agent -l user-namespace -d 'The namespace of a member of the socket\'s group; `{name}` is their login name (made a DNS label and given `-u<uid>` when it is not one as it stands)' -r
complete -c bkg-agent -l user-limit -d 'What one local user may ask for (repeatable): `cpus=`, `memory=`, `timeout=`, `disk=` cap each run; `sandboxes=N` the persistent sandboxes they keep; `disk-budget=SIZE` those sandboxes\' disk limits summed' -r
complete -c bkg-agent -l state-dir -d 'Directory for the run store and sandbox disk images' -r -F
complete -c bkg-agent -l warm-pool -d 'Prepared sandboxes kept warm for default-sized runs when idle; the pool grows while runs find it empty and shrinks back when they stop (0 turns the pool off: each run\'s sandbox is prepared when it starts, its Python still forked from the zygote unless --zygote false)' -r
complete -c bkg-agent -l warm-pool-memory -d 'Memory the warm pool\'s prepared sandboxes together may take as it grows with demand' -r
complete -c bkg-agent -l zygote -d 'Fork sandboxes\' Python interpreters from one initialised once (the zygote; what its forks share: docs/security.md), instead of starting one in each sandbox. Without a warm pool it starts at the first Python run' -r -f -a "true\t''
false\t''"
complete -c bkg-agent -l zygote-memory -d 'Memory the zygote may take, as its own cgroup\'s limit: a generation that reaches it ends, and the next one starts' -r
complete -c bkg-agent -l max-cpus -d 'Highest CPU count a run may ask for (below 1, also the default)' -r
complete -c bkg-agent -l max-memory -d 'Highest memory limit a run may ask for (below 512MiB, also the default)' -r
complete -c bkg-agent -l max-timeout -d 'Highest timeout a run may ask for (below 60s, also the default); `none` lets persistent sandboxes run without one (`timeout: none` in cave.yaml, for services)' -r
complete -c bkg-agent -l egress-allow -d 'What runs may reach through their proxy, at most (repeatable): HOST[:PORT], *.DOMAIN, `*` (every public host by name), an address (opens that internal address), host.bkg.internal[:PORT] (the host\'s loopback), or `none`. A run names its own hosts (`bkg exe --net`, cave.yaml); each must be within these' -r
complete -c bkg-agent -l max-disk -d 'Highest disk limit a run may ask for (below 500MiB, also the default)' -r
complete -c bkg-agent -l python -d 'Python interpreter used for `python` runs' -r -F
complete -c bkg-agent -l node -d 'Node.js interpreter used for `node` runs' -r -F
complete -c bkg-agent -l package-index -d 'The Python package index runs\' packages are installed from (PEP 503 simple API): the only network an install sandbox has. A host name, or a loopback address for a mirror on this machine' -r
complete -c bkg-agent -l npm -d 'npm, which installs Node.js runs\' packages (`npm ci`) in an install sandbox, run by --node' -r -F
complete -c bkg-agent -l npm-registry -d 'The npm registry runs\' Node.js packages are installed from: the only network a Node install sandbox has. A host name, or a loopback address for a mirror on this machine' -r
complete -c bkg-agent -l cgroup-dir -d 'Directory created beneath the agent\'s own cgroup for its sandboxes\' cgroups' -r
complete -c bkg-agent -l uid-base -d 'First of the 65,536 host uids given to sandboxes (four per live sandbox), in decimal or hex (0x70000000); from 65536 to 4294901759, and overlapping no other agent\'s range' -r
complete -c bkg-agent -l listen -d 'Also serve the API on TCP at ADDR:PORT; every request there needs an API key. An address other than loopback needs --tls-cert (or --plain-http-behind-proxy)' -r
complete -c bkg-agent -l tls-cert -d 'Serve TLS on --listen with this certificate chain (PEM, leaf first); re-read on SIGHUP' -r -F
complete -c bkg-agent -l tls-key -d 'The private key of --tls-cert (PEM); re-read with it on SIGHUP' -r -F
complete -c bkg-agent -l header-timeout -d 'Time a connection has to send a whole request head, also between requests on a kept-alive connection (and for the TLS handshake): slow or idle connections are closed after it' -r
complete -c bkg-agent -l body-timeout -d 'Time a request has to send its whole body (408 after it)' -r
complete -c bkg-agent -l body-budget -d 'Request bodies held in memory at once, all requests together (503 with Retry-After over it)' -r
complete -c bkg-agent -l max-connections -d 'Open connections on the TCP listener; more are closed on arrival' -r
complete -c bkg-agent -l max-unix-connections -d 'Open connections on the unix socket, counted apart from TCP so the network can never take the local clients\' room' -r
complete -c bkg-agent -l db-url -d 'The shared bkg_db (PostgreSQL URL, `sslmode=` for TLS): every event is synced there' -r
complete -c bkg-agent -l namespace-role -d 'Make (or give a new password to) the bkg_db login role of namespace NAMESPACE, `bkg_ns_NAMESPACE`, with the password read from stdin, using --db-url (the schema\'s owner\'s), and exit, serving nothing: the role sees only its namespace\'s rows' -r
complete -c bkg-agent -l retention -d 'How long finished runs (and their logs) are kept, here and in bkg_db; the audit log is kept for ever' -r
complete -c bkg-agent -l retention-for -d 'Another retention for one namespace (repeatable), e.g. `ci=7d`' -r
complete -c bkg-agent -l object-store -d 'Where runs\' kept files go: `s3://BUCKET[/PREFIX]` (an S3-compatible service, configured by the usual AWS_* variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP) or a directory. Default: <state-dir>/objects' -r
complete -c bkg-agent -l artefact-quota -d 'How much each namespace\'s kept files may take (distinct contents counted once)' -r
complete -c bkg-agent -l artefact-quota-for -d 'Another artefact quota for one namespace (repeatable), e.g. `ci=1GiB`' -r
complete -c bkg-agent -l listen-address-file -d 'Write the TCP address actually bound (useful with port 0) to this file' -r -F
complete -c bkg-agent -l webhook -d 'POST a signed notice to this URL whenever a key rotates (repeatable; http:// or https://)' -r
complete -c bkg-agent -l webhook-secret-file -d 'The shared secret (at least 32 bytes) that signs rotation notices sent to webhooks and checks those peers send to /api/v1/auth/keys/rotated' -r -F
complete -c bkg-agent -l admin-key-ttl -d 'Lifetime of admin keys' -r
complete -c bkg-agent -l namespace-key-ttl -d 'Lifetime of namespace keys' -r
complete -c bkg-agent -l session-key-ttl -d 'Lifetime of session keys (login, refresh)' -r
complete -c bkg-agent -l model-access-key-ttl -d 'Lifetime of model-access keys' -r
complete -c bkg-agent -l admin-rate-limit -d 'Requests per minute of each admin key on TCP' -r
complete -c bkg-agent -l namespace-rate-limit -d 'Requests per minute of each namespace key on TCP' -r
complete -c bkg-agent -l session-rate-limit -d 'Requests per minute of each session key on TCP' -r
complete -c bkg-agent -l model-access-rate-limit -d 'Requests per minute of each model-access key on TCP' -r
complete -c bkg-agent -l max-running-runs -d 'Runs going on at once; more wait in the queue, a freed place going to the namespace with the fewest runs going. Sessions, services and terminals together take at most all but a quarter of them (one kept at least); one more is refused' -r
complete -c bkg-agent -l max-queued-runs -d 'Runs that may wait for a place; more are refused with 503 and Retry-After' -r
complete -c bkg-agent -l disk-budget -d 'Disk all live sandboxes together (warm ones too) may be given, their disk limits summed; a run that would go over it is refused with 503 and Retry-After. The default is read at each sandbox: 80% of the state directory\'s free space and of what this agent\'s sandboxes hold, so other agents and writers on that filesystem shrink it' -r
complete -c bkg-agent -l health-interval -d 'How recent a successful run must be for /healthz to answer ok without running a tiny sandbox of its own to find out' -r
complete -c bkg-agent -l allow-degraded -d 'Run at this lower security level (`standard` or `degraded`) when the host gives no better; without it the agent starts only where the host gives `strict` (docs/compatibility.md)' -r
complete -c bkg-agent -l ready-fd -d 'Internal: the descriptor on which an agent started without --foreground tells the process that started it that it serves its socket (one byte), or, closed unwritten, that it failed to start' -r
complete -c bkg-agent -l foreground -d 'Stay in the foreground and log to stderr (without it the agent detaches and logs to STATE_DIR/agent.log)'
complete -c bkg-agent -l plain-http-behind-proxy -d 'Serve plain HTTP on a --listen address other than loopback: only behind a proxy that terminates TLS, since API keys would otherwise cross the network in clear'
complete -c bkg-agent -l migrate-db -d 'Apply bkg_db\'s migrations with --db-url and exit, serving nothing: how the schema\'s owner upgrades a bkg_db whose agents log in as members of bkg_agent, which may not (needs no root)'
complete -c bkg-agent -l check-host -d 'Check the host (namespaces, cgroups, Landlock, seccomp, loop devices, runtimes, the state directory\'s filesystem), print the report as JSON and exit; needs no root (`bkg doctor` runs it)'
complete -c bkg-agent -l print-openapi -d 'Print the API\'s OpenAPI document (YAML) and exit'
complete -c bkg-agent -s h -l help -d 'Print help'
complete -c bkg-agent -s V -l version -d 'Print version'
