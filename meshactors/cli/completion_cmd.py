"""`meshactors completion bash|zsh`: a shell completion script made from the argument parser
itself, so it always knows every command and option of this version."""

from __future__ import annotations

import argparse
import shlex

ROOT = "meshactors"  # the key of the top level in the script's table

BASH = """\
# meshactors completion for bash: eval "$(meshactors completion bash)" (e.g. in ~/.bashrc)
declare -gA _meshactors_words=(
{table}
)
_meshactors() {{
    local i word cmd={root} cur="${{COMP_WORDS[COMP_CWORD]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="$cmd ${{COMP_WORDS[i]}}"
        if [[ -n "${{_meshactors_words[$word]+x}}" ]]; then cmd="$word"; fi
    done
    COMPREPLY=($(compgen -W "${{_meshactors_words[$cmd]}}" -- "$cur"))
}}
complete -o default -F _meshactors meshactors
"""

ZSH = """\
#compdef meshactors
# meshactors completion for zsh: eval "$(meshactors completion zsh)" (e.g. in ~/.zshrc,
# after compinit), or save it as _meshactors in a directory of $fpath
typeset -gA _meshactors_words
_meshactors_words=(
{table}
)
_meshactors() {{
    local i word cmd={root}
    for ((i = 2; i < CURRENT; i++)); do
        word="$cmd ${{words[i]}}"
        if (( ${{+_meshactors_words[$word]}} )); then cmd="$word"; fi
    done
    compadd -- ${{=_meshactors_words[$cmd]}} || _files
}}
compdef _meshactors meshactors
"""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `completion` command."""
    parser = commands.add_parser("completion", help="print a shell completion script")
    parser.add_argument("shell", choices=("bash", "zsh"), help="the shell the script is for")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from meshactors.cli.app import build_parser  # the whole parser, this command included

    table = completion_table(build_parser())
    lines = "\n".join(
        f"    [{shlex.quote(key)}]={shlex.quote(' '.join(words))}"
        if args.shell == "bash"
        else f"    {shlex.quote(key)} {shlex.quote(' '.join(words))}"
        for key, words in table.items()
    )
    print((BASH if args.shell == "bash" else ZSH).format(table=lines, root=ROOT), end="")
    return 0


def completion_table(parser: argparse.ArgumentParser, key: str = ROOT) -> dict[str, list[str]]:
    """For each command path ("meshactors daemon up"), the words that may follow it: its
    sub-commands and its options."""
    words: list[str] = []
    table: dict[str, list[str]] = {key: words}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words.append(name)
                table.update(completion_table(child, f"{key} {name}"))
        elif action.help != argparse.SUPPRESS:
            words += [option for option in action.option_strings if option.startswith("--")]
    return table
