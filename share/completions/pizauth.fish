# fish completion for pizauth(1)
#
# Install as ~/.config/fish/completions/pizauth.fish (or in a directory of
# $fish_complete_path). Account names are read from the configuration file that
# `pizauth info` reports.

function __pizauth_accounts --description 'Print the accounts of the pizauth configuration'
    set -l cmd (commandline -opc)[1]
    set -q cmd[1]; or set cmd pizauth
    set -l conf ($cmd info 2>/dev/null | awk -F' *: *' '$1 ~ /^ *config file$/ { sub(/^ *config file *: */, ""); print; exit }')
    test -n "$conf" -a -r "$conf"; or return 0
    awk '/^[ \t]*account[ \t]*"/ {
        s = $0
        sub(/^[ \t]*account[ \t]*"/, "", s)
        name = ""
        while (s != "") {
            c = substr(s, 1, 1)
            if (c == "\\\\") { name = name substr(s, 2, 1); s = substr(s, 3); continue }
            if (c == "\\"") { print name; break }
            name = name c
            s = substr(s, 2)
        }
    }' $conf 2>/dev/null
end

function __pizauth_wants_account --description 'True if no account has been given yet'
    set -l args (commandline -opc)[3..-1]
    set -l endopts 0
    for arg in $args
        if test $endopts = 1
            return 1
        end
        switch $arg
            case --
                set endopts 1
            case '-?*'
            case '*'
                return 1
        end
    end
    return 0
end

set -l __pizauth_cmds dump info login refresh reload restore revoke server show shutdown status systemd-unit

complete -c pizauth -f
complete -c pizauth -n "not __fish_seen_subcommand_from $__pizauth_cmds" -s V -l version -d 'Print the version'
complete -c pizauth -n "not __fish_seen_subcommand_from $__pizauth_cmds" -a dump -d 'Write the tokens in a form restore accepts'
complete -c pizauth -n "not __fish_seen_subcommand_from $__pizauth_cmds" -a info -d 'Show version, paths and server details'
complete -c pizauth -n "not __fish_seen_subcommand_from $__pizauth_cmds" -a login -d 'Print the login URL of an account'
complete -c pizauth -n "not __fish_seen_subcommand_from $__pizauth_cmds" -a refresh -d 'Get a new access token now'
complete -c pizauth -n "not __fish_seen_subcommand_from $__pizauth_cmds" -a reload -d 'Read the configuration file again'
complete -c pizauth -n "not __fish_seen_subcommand_from $__pizauth_cmds" -a restore -d 'Give the server tokens from a dump'
complete -c pizauth -n "not __fish_seen_subcommand_from $__pizauth_cmds" -a revoke -d 'Forget the tokens of an account'
complete -c pizauth -n "not __fish_seen_subcommand_from $__pizauth_cmds" -a server -d 'Start the server'
complete -c pizauth -n "not __fish_seen_subcommand_from $__pizauth_cmds" -a show -d 'Print the access token of an account'
complete -c pizauth -n "not __fish_seen_subcommand_from $__pizauth_cmds" -a shutdown -d 'Stop the server'
complete -c pizauth -n "not __fish_seen_subcommand_from $__pizauth_cmds" -a status -d 'Print the state of every account'
complete -c pizauth -n "not __fish_seen_subcommand_from $__pizauth_cmds" -a systemd-unit -d 'Print a systemd user unit for this pizauth'

# Every command accepts -h and -v.
complete -c pizauth -n "__fish_seen_subcommand_from $__pizauth_cmds" -s h -l help -d 'Print usage'
complete -c pizauth -n "__fish_seen_subcommand_from $__pizauth_cmds" -s v -l verbose -d 'Log more'

complete -c pizauth -n "__fish_seen_subcommand_from show refresh" -s u -d 'Leave the URL out of the error message'
complete -c pizauth -n "__fish_seen_subcommand_from login show refresh revoke; and __pizauth_wants_account" -a '(__pizauth_accounts)' -d Account
complete -c pizauth -n "__fish_seen_subcommand_from info" -s j -d 'Print JSON'
complete -c pizauth -n "__fish_seen_subcommand_from info server" -s c -l config -r -F -d 'Configuration file'
complete -c pizauth -n "__fish_seen_subcommand_from server" -s d -d 'Stay in the foreground'
