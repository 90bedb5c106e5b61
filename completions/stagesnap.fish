# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_stagesnap_global_optspecs
    string join \n c/config= base-dir= s/set= json v/verbose q/quiet no-progress lock-timeout= timeout= h/help V/version
end

function __fish_stagesnap_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_stagesnap_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_stagesnap_using_subcommand
    set -l cmd (__fish_stagesnap_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c stagesnap -n "__fish_stagesnap_needs_command" -s c -l config -d 'Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]' -r -F
complete -c stagesnap -n "__fish_stagesnap_needs_command" -l base-dir -d 'The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file\'s folder]' -r -F
complete -c stagesnap -n "__fish_stagesnap_needs_command" -s s -l set -d 'Override a [suite_isolation] setting (or cache_dir) for this run; repeatable' -r
complete -c stagesnap -n "__fish_stagesnap_needs_command" -l lock-timeout -d 'Seconds to wait for another stagesnap holding the store\'s lock' -r
complete -c stagesnap -n "__fish_stagesnap_needs_command" -l timeout -d 'Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]' -r
complete -c stagesnap -n "__fish_stagesnap_needs_command" -l json -d 'Print one JSON document to stdout instead of text'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -s v -l verbose -d 'More log output on stderr (-v debug, -vv trace); RUST_LOG overrides'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -s q -l quiet -d 'Only errors on stderr'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -l no-progress -d 'No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -s h -l help -d 'Print help'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -s V -l version -d 'Print version'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -f -a "create" -d 'Snapshot the live data'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -f -a "restore" -d 'Bring the live data back to a snapshot, in place'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -f -a "list" -d 'List snapshots, newest first'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -f -a "delete" -d 'Remove snapshots'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -f -a "adopt" -d 'Turn a snapshot the stage-env harness left into a stagesnap snapshot (see `list`)'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -f -a "prune" -d 'Remove the oldest unpinned snapshots beyond a count'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -f -a "push" -d 'Copy a snapshot to the configured remote, sending only the pieces it lacks'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -f -a "pull" -d 'Copy a snapshot from the configured remote, fetching only the pieces not held here'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -f -a "doctor" -d 'Check that the configured mode can run here, and say why not'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -f -a "config" -d 'Show every effective setting and where it came from'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -f -a "verify" -d 'Check stored snapshots against their manifests (every file\'s hash)'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -f -a "status" -d 'Is the live data identical to a snapshot? Exit 0 if so, 1 with a summary per node if not, 7 if it could not tell'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -f -a "diff" -d 'List what differs between two snapshots, or a snapshot and the live data. Exit 0 if nothing, 1 if something, 7 if it could not compare'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -f -a "wait" -d 'Wait until a background create (`create --background`) of a snapshot ends; exit with its outcome'
complete -c stagesnap -n "__fish_stagesnap_needs_command" -f -a "run" -d 'Restore a snapshot, run a test suite on it, and exit with the suite\'s exit code'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand create" -s c -l config -d 'Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand create" -l base-dir -d 'The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file\'s folder]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand create" -s s -l set -d 'Override a [suite_isolation] setting (or cache_dir) for this run; repeatable' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand create" -l lock-timeout -d 'Seconds to wait for another stagesnap holding the store\'s lock' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand create" -l timeout -d 'Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand create" -l force -d 'Replace an existing snapshot of that name (the old one stays usable until the new one is complete)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand create" -l pin -d 'Protect the snapshot from pruning'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand create" -l allow-interrupted -d 'Snapshot the data even though a restore was interrupted or failed, leaving it in an unknown state'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand create" -l background -d 'Return once the data is captured and the nodes run again; a detached low-priority process finishes the snapshot (see `stagesnap wait`)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand create" -l json -d 'Print one JSON document to stdout instead of text'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand create" -s v -l verbose -d 'More log output on stderr (-v debug, -vv trace); RUST_LOG overrides'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand create" -s q -l quiet -d 'Only errors on stderr'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand create" -l no-progress -d 'No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand create" -s h -l help -d 'Print help'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand restore" -l verify -d 'Check the restored data against the manifest: metadata (sizes, modes, owners, times, links, xattrs), full (also every file\'s hash) or none [default: restore_verify]' -r -f -a "metadata\t''
full\t''
none\t''"
complete -c stagesnap -n "__fish_stagesnap_using_subcommand restore" -s c -l config -d 'Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand restore" -l base-dir -d 'The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file\'s folder]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand restore" -s s -l set -d 'Override a [suite_isolation] setting (or cache_dir) for this run; repeatable' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand restore" -l lock-timeout -d 'Seconds to wait for another stagesnap holding the store\'s lock' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand restore" -l timeout -d 'Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand restore" -l allow-stale -d 'Restore even if files named by `fingerprint` changed since the snapshot was made'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand restore" -l json -d 'Print one JSON document to stdout instead of text'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand restore" -s v -l verbose -d 'More log output on stderr (-v debug, -vv trace); RUST_LOG overrides'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand restore" -s q -l quiet -d 'Only errors on stderr'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand restore" -l no-progress -d 'No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand restore" -s h -l help -d 'Print help'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand list" -s c -l config -d 'Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand list" -l base-dir -d 'The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file\'s folder]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand list" -s s -l set -d 'Override a [suite_isolation] setting (or cache_dir) for this run; repeatable' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand list" -l lock-timeout -d 'Seconds to wait for another stagesnap holding the store\'s lock' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand list" -l timeout -d 'Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand list" -l remote -d 'List the configured remote\'s snapshots instead'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand list" -l json -d 'Print one JSON document to stdout instead of text'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand list" -s v -l verbose -d 'More log output on stderr (-v debug, -vv trace); RUST_LOG overrides'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand list" -s q -l quiet -d 'Only errors on stderr'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand list" -l no-progress -d 'No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand list" -s h -l help -d 'Print help'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand delete" -s c -l config -d 'Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand delete" -l base-dir -d 'The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file\'s folder]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand delete" -s s -l set -d 'Override a [suite_isolation] setting (or cache_dir) for this run; repeatable' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand delete" -l lock-timeout -d 'Seconds to wait for another stagesnap holding the store\'s lock' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand delete" -l timeout -d 'Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand delete" -l remote -d 'Remove them from the configured remote instead (their pieces go at its prunes)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand delete" -l json -d 'Print one JSON document to stdout instead of text'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand delete" -s v -l verbose -d 'More log output on stderr (-v debug, -vv trace); RUST_LOG overrides'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand delete" -s q -l quiet -d 'Only errors on stderr'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand delete" -l no-progress -d 'No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand delete" -s h -l help -d 'Print help'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand adopt" -s c -l config -d 'Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand adopt" -l base-dir -d 'The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file\'s folder]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand adopt" -s s -l set -d 'Override a [suite_isolation] setting (or cache_dir) for this run; repeatable' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand adopt" -l lock-timeout -d 'Seconds to wait for another stagesnap holding the store\'s lock' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand adopt" -l timeout -d 'Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand adopt" -l force -d 'Replace a stagesnap snapshot of the same name'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand adopt" -l json -d 'Print one JSON document to stdout instead of text'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand adopt" -s v -l verbose -d 'More log output on stderr (-v debug, -vv trace); RUST_LOG overrides'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand adopt" -s q -l quiet -d 'Only errors on stderr'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand adopt" -l no-progress -d 'No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand adopt" -s h -l help -d 'Print help'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand prune" -l keep -d 'How many snapshots to keep [default: keep_snapshot_count from the config]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand prune" -l keep-within -d 'Also keep snapshots created within DURATION, e.g. 36h, 7d, 2w [default: keep_within from the config]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand prune" -l keep-used-within -d 'Also keep snapshots restored within DURATION, e.g. 2d [default: keep_used_within from the config]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand prune" -s c -l config -d 'Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand prune" -l base-dir -d 'The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file\'s folder]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand prune" -s s -l set -d 'Override a [suite_isolation] setting (or cache_dir) for this run; repeatable' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand prune" -l lock-timeout -d 'Seconds to wait for another stagesnap holding the store\'s lock' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand prune" -l timeout -d 'Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand prune" -l dry-run -d 'Only say, for every snapshot, which rule keeps or removes it'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand prune" -l remote -d 'Prune the configured remote instead: keep the newest N (and pinned ones), condemn the packs no snapshot there needs (older than an hour), remove those condemned an hour ago'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand prune" -l json -d 'Print one JSON document to stdout instead of text'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand prune" -s v -l verbose -d 'More log output on stderr (-v debug, -vv trace); RUST_LOG overrides'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand prune" -s q -l quiet -d 'Only errors on stderr'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand prune" -l no-progress -d 'No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand prune" -s h -l help -d 'Print help'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand push" -s c -l config -d 'Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand push" -l base-dir -d 'The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file\'s folder]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand push" -s s -l set -d 'Override a [suite_isolation] setting (or cache_dir) for this run; repeatable' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand push" -l lock-timeout -d 'Seconds to wait for another stagesnap holding the store\'s lock' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand push" -l timeout -d 'Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand push" -l json -d 'Print one JSON document to stdout instead of text'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand push" -s v -l verbose -d 'More log output on stderr (-v debug, -vv trace); RUST_LOG overrides'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand push" -s q -l quiet -d 'Only errors on stderr'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand push" -l no-progress -d 'No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand push" -s h -l help -d 'Print help'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand pull" -s c -l config -d 'Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand pull" -l base-dir -d 'The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file\'s folder]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand pull" -s s -l set -d 'Override a [suite_isolation] setting (or cache_dir) for this run; repeatable' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand pull" -l lock-timeout -d 'Seconds to wait for another stagesnap holding the store\'s lock' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand pull" -l timeout -d 'Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand pull" -l force -d 'Replace a different local snapshot of that name'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand pull" -l json -d 'Print one JSON document to stdout instead of text'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand pull" -s v -l verbose -d 'More log output on stderr (-v debug, -vv trace); RUST_LOG overrides'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand pull" -s q -l quiet -d 'Only errors on stderr'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand pull" -l no-progress -d 'No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand pull" -s h -l help -d 'Print help'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand doctor" -s c -l config -d 'Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand doctor" -l base-dir -d 'The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file\'s folder]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand doctor" -s s -l set -d 'Override a [suite_isolation] setting (or cache_dir) for this run; repeatable' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand doctor" -l lock-timeout -d 'Seconds to wait for another stagesnap holding the store\'s lock' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand doctor" -l timeout -d 'Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand doctor" -l json -d 'Print one JSON document to stdout instead of text'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand doctor" -s v -l verbose -d 'More log output on stderr (-v debug, -vv trace); RUST_LOG overrides'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand doctor" -s q -l quiet -d 'Only errors on stderr'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand doctor" -l no-progress -d 'No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand doctor" -s h -l help -d 'Print help'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand config" -s c -l config -d 'Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand config" -l base-dir -d 'The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file\'s folder]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand config" -s s -l set -d 'Override a [suite_isolation] setting (or cache_dir) for this run; repeatable' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand config" -l lock-timeout -d 'Seconds to wait for another stagesnap holding the store\'s lock' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand config" -l timeout -d 'Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand config" -l json -d 'Print one JSON document to stdout instead of text'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand config" -s v -l verbose -d 'More log output on stderr (-v debug, -vv trace); RUST_LOG overrides'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand config" -s q -l quiet -d 'Only errors on stderr'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand config" -l no-progress -d 'No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand config" -s h -l help -d 'Print help'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand verify" -s c -l config -d 'Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand verify" -l base-dir -d 'The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file\'s folder]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand verify" -s s -l set -d 'Override a [suite_isolation] setting (or cache_dir) for this run; repeatable' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand verify" -l lock-timeout -d 'Seconds to wait for another stagesnap holding the store\'s lock' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand verify" -l timeout -d 'Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand verify" -l all -d 'Check every snapshot in the store'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand verify" -l json -d 'Print one JSON document to stdout instead of text'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand verify" -s v -l verbose -d 'More log output on stderr (-v debug, -vv trace); RUST_LOG overrides'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand verify" -s q -l quiet -d 'Only errors on stderr'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand verify" -l no-progress -d 'No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand verify" -s h -l help -d 'Print help'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand status" -s c -l config -d 'Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand status" -l base-dir -d 'The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file\'s folder]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand status" -s s -l set -d 'Override a [suite_isolation] setting (or cache_dir) for this run; repeatable' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand status" -l lock-timeout -d 'Seconds to wait for another stagesnap holding the store\'s lock' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand status" -l timeout -d 'Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand status" -l full -d 'Hash every live file instead of only those whose size and mtime cannot tell'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand status" -l json -d 'Print one JSON document to stdout instead of text'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand status" -s v -l verbose -d 'More log output on stderr (-v debug, -vv trace); RUST_LOG overrides'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand status" -s q -l quiet -d 'Only errors on stderr'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand status" -l no-progress -d 'No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand status" -s h -l help -d 'Print help'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand diff" -s c -l config -d 'Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand diff" -l base-dir -d 'The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file\'s folder]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand diff" -s s -l set -d 'Override a [suite_isolation] setting (or cache_dir) for this run; repeatable' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand diff" -l lock-timeout -d 'Seconds to wait for another stagesnap holding the store\'s lock' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand diff" -l timeout -d 'Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand diff" -l stat -d 'Counts and bytes per node instead of one line per entry'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand diff" -l full -d 'Hash every live file instead of only those whose size and mtime cannot tell'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand diff" -l json -d 'Print one JSON document to stdout instead of text'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand diff" -s v -l verbose -d 'More log output on stderr (-v debug, -vv trace); RUST_LOG overrides'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand diff" -s q -l quiet -d 'Only errors on stderr'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand diff" -l no-progress -d 'No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand diff" -s h -l help -d 'Print help'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand wait" -s c -l config -d 'Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand wait" -l base-dir -d 'The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file\'s folder]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand wait" -s s -l set -d 'Override a [suite_isolation] setting (or cache_dir) for this run; repeatable' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand wait" -l lock-timeout -d 'Seconds to wait for another stagesnap holding the store\'s lock' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand wait" -l timeout -d 'Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand wait" -l json -d 'Print one JSON document to stdout instead of text'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand wait" -s v -l verbose -d 'More log output on stderr (-v debug, -vv trace); RUST_LOG overrides'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand wait" -s q -l quiet -d 'Only errors on stderr'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand wait" -l no-progress -d 'No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand wait" -s h -l help -d 'Print help'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand run" -l snapshot -d 'Snapshot to restore before the suite [default: snapshot_name from the config]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand run" -s c -l config -d 'Config file [default: $STAGESNAP_CONFIG, else stage-env.cfg or config/stage-env.cfg in this or the nearest parent directory]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand run" -l base-dir -d 'The stage-env base folder that relative paths in the config file resolve against [default: $STAGESNAP_BASE_DIR, else the folder holding config/ for a file in config/, else the config file\'s folder]' -r -F
complete -c stagesnap -n "__fish_stagesnap_using_subcommand run" -s s -l set -d 'Override a [suite_isolation] setting (or cache_dir) for this run; repeatable' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand run" -l lock-timeout -d 'Seconds to wait for another stagesnap holding the store\'s lock' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand run" -l timeout -d 'Give up after this many seconds (exit 1), cleaning up as for Ctrl-C; `run` does not count the suite [default: no limit]' -r
complete -c stagesnap -n "__fish_stagesnap_using_subcommand run" -l keep-failed -d 'When the suite fails, snapshot the data it left as NAME-failed-<UTC time>, pinned'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand run" -l allow-stale -d 'Restore even if files named by `fingerprint` changed since the snapshot was made'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand run" -l json -d 'Print one JSON document to stdout instead of text'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand run" -s v -l verbose -d 'More log output on stderr (-v debug, -vv trace); RUST_LOG overrides'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand run" -s q -l quiet -d 'Only errors on stderr'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand run" -l no-progress -d 'No progress bars (they are only drawn when stderr is a terminal, and never with -q or --json)'
complete -c stagesnap -n "__fish_stagesnap_using_subcommand run" -s h -l help -d 'Print help'

# Snapshot names (added by stagesnap generate-assets).
complete -c stagesnap -n "__fish_stagesnap_using_subcommand create restore delete adopt push pull verify status diff wait" -f -a "(stagesnap complete-names 2>/dev/null)"
complete -c stagesnap -n "__fish_stagesnap_using_subcommand run" -l snapshot -x -a "(stagesnap complete-names 2>/dev/null)"
