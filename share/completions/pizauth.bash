# bash completion for pizauth(1)                                -*- shell-script -*-
#
# Install as pizauth in a bash-completion directory, for example
# ~/.local/share/bash-completion/completions/pizauth, or source it from ~/.bashrc.
#
# Completes commands, the options of each command, files after -c, and account
# names, which are read from the configuration file that `pizauth info` reports.

# Print the accounts of the configuration file, one per line, with \" and \\ undone.
# $1: the pizauth command to ask for the configuration file's path.
_pizauth_accounts()
{
    local conf
    conf=$("${1:-pizauth}" info 2>/dev/null |
        awk -F' *: *' '$1 ~ /^ *config file$/ { sub(/^ *config file *: */, ""); print; exit }')
    [[ -n $conf && -r $conf ]] || return 0
    awk '/^[ \t]*account[ \t]*"/ {
        s = $0
        sub(/^[ \t]*account[ \t]*"/, "", s)
        name = ""
        while (s != "") {
            c = substr(s, 1, 1)
            if (c == "\\") { name = name substr(s, 2, 1); s = substr(s, 3); continue }
            if (c == "\"") { print name; break }
            name = name c
            s = substr(s, 2)
        }
    }' "$conf" 2>/dev/null
}

# Split the command line up to the cursor into shell words, without quotes and
# backslashes, as the command will see them: sets _pizauth_words, _pizauth_quote
# (the quote still open in the last word, if any) and _pizauth_raw (the last word
# as typed). COMP_WORDS is no use here: it is also split at '=' and ':', which may
# occur in account names.
_pizauth_split()
{
    local line=${COMP_LINE:0:COMP_POINT} word="" quote="" inword=0 start=0 c i
    _pizauth_words=()
    for ((i = 0; i < ${#line}; i++)); do
        c=${line:i:1}
        if [[ $quote == "'" ]]; then
            if [[ $c == "'" ]]; then quote=""; else word+=$c; fi
        elif [[ $quote == '"' ]]; then
            if [[ $c == '"' ]]; then
                quote=""
            elif [[ $c == '\' && ${line:i+1:1} == [\"\\\$\`] ]]; then
                word+=${line:i+1:1}
                i=$((i + 1))
            else
                word+=$c
            fi
        elif [[ $c == [\ $'\t\n'] ]]; then
            if ((inword)); then _pizauth_words+=("$word"); fi
            word="" inword=0
        else
            ((inword)) || start=$i
            inword=1
            case $c in
                "'" | '"') quote=$c ;;
                '\') word+=${line:i+1:1} i=$((i + 1)) ;;
                *) word+=$c ;;
            esac
        fi
    done
    _pizauth_words+=("$word")
    _pizauth_quote=$quote
    _pizauth_raw=""
    if ((inword)); then _pizauth_raw=${line:start}; fi
}

_pizauth()
{
    local -a words
    local _pizauth_words _pizauth_quote _pizauth_raw
    _pizauth_split
    words=("${_pizauth_words[@]}")
    local ncur=$((${#words[@]} - 1))
    local cur=${words[ncur]} text=$2
    COMPREPLY=()

    if ((ncur == 1)); then
        if [[ $cur == -* ]]; then
            mapfile -t COMPREPLY < <(compgen -W '-V --version -h --help' -- "$cur")
        else
            mapfile -t COMPREPLY < <(compgen -W 'dump info login refresh reload restore
                revoke server show shutdown status systemd-unit' -- "$cur")
        fi
        return 0
    fi

    local sub=${words[1]} flags="" config=0 account=0
    case $sub in
        show | refresh) flags="-u" account=1 ;;
        login | revoke) account=1 ;;
        info) flags="-j -c --config=" config=1 ;;
        server) flags="-c --config= -d -v --verbose" config=1 ;;
        dump | reload | restore | shutdown | status | systemd-unit) ;;
        *) return 0 ;;
    esac
    flags+=" -h --help"

    # What the words before the cursor already give: positional arguments, options
    # (not offered again, except -v), and whether the cursor is on -c's argument.
    local i w npos=0 endopts=0 wantfile=0 given=" "
    for ((i = 2; i < ncur; i++)); do
        w=${words[i]}
        wantfile=0
        if ((endopts)) || [[ $w == - || $w != -* ]]; then
            npos=$((npos + 1))
        elif [[ $w == -- ]]; then
            endopts=1
        elif [[ $w == --* ]]; then
            case ${w%%=*} in
                --help) given+="-h " ;;
                --config) given+="-c " ;;
            esac
        else
            local j
            for ((j = 1; j < ${#w}; j++)); do given+="-${w:j:1} "; done
            # -c, or a group ending in it (-dc), takes the next word unless that is an option.
            ((config)) && [[ $w =~ ^-[^c]*c$ ]] && wantfile=1
        fi
    done

    if ((wantfile)) && [[ $cur != -* || -n $_pizauth_quote ]]; then
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        return 0
    fi
    if ((config && !endopts)) && [[ $cur == --config=* ]]; then
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -f -- "${cur#--config=}")
        # Unless '=' breaks words (it does by default), readline replaces all of it.
        if [[ $text == --config=* ]]; then
            COMPREPLY=("${COMPREPLY[@]/#/--config=}")
        fi
        return 0
    fi
    if ((!endopts)) && [[ $cur == -* && -z $_pizauth_quote ]]; then
        local f short offer=()
        for f in $flags; do
            # Options may be given once, except -v; --help is -h, --config= is -c.
            case $f in
                --help) short=-h ;;
                --config=) short=-c ;;
                *) short=$f ;;
            esac
            [[ $f != -v && $f != --verbose && $given == *" $short "* ]] && continue
            offer+=("$f")
        done
        mapfile -t COMPREPLY < <(compgen -W "${offer[*]}" -- "$cur")
        # No space after --config=, so that the path can follow.
        [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == --config= ]] && compopt -o nospace 2>/dev/null
        return 0
    fi
    if ((account && npos == 0)); then
        local name before=${_pizauth_raw%"$text"}
        local -a names
        mapfile -t names < <(_pizauth_accounts "${words[0]/#\~/$HOME}")
        for name in "${names[@]}"; do
            [[ $name == "$cur"* ]] || continue
            if [[ -n $_pizauth_quote ]]; then
                # Readline completes inside the open quote and closes it.
                COMPREPLY+=("$name")
            else
                # Readline replaces only the text after the last word-breaking
                # character (such as ':'), which bash passes as $2.
                name=$(printf '%q' "$name")
                [[ $name == "$before"* ]] && COMPREPLY+=("${name#"$before"}")
            fi
        done
    fi
    return 0
}

complete -F _pizauth pizauth
