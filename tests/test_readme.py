"""The README's commands exist: every `p4r` subcommand and option its fenced blocks name is found in the click
command tree (`persona4rec.cli:main`, introspected, so the test follows the CLI as it changes), every `make`
target in the Makefile, every file a command names, every relative link. The same holds for the docs pages
the README sends a newcomer to first (running, stages, results). The headline table matches the committed
report, and the README stays short.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

from persona4rec.cli import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
#: Pages the README sends a newcomer to, written with it; their commands are held to the same checks.
PAGES = [README, REPO / "docs" / "running.md", REPO / "docs" / "stages.md", REPO / "docs" / "results.md"]
SHELL_FENCES = {"bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&"}


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return [(m.group(1).strip().lower(), m.group(2)) for m in re.finditer(r"(?ms)^```([^\n]*)\n(.*?)^```", text)]


def shell_commands(body: str) -> list[list[str]]:
    """Commands of a shell block: continuations joined, comments dropped, ``NAME="..."`` variables expanded,
    split at &&, ||, ;, | and &."""
    text = re.sub(r"\\\n\s*", " ", body)
    variables: dict[str, str] = {}
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("$ "):  # a console transcript: the prompt
            line = line[2:]
        for name, value in variables.items():
            line = line.replace(f"${name}", value)
        lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError as exc:
            raise AssertionError(f"unparseable command line {line!r}: {exc}") from None
        assignment = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", tokens[0]) if len(tokens) == 1 else None
        if assignment:
            variables[assignment.group(1)] = assignment.group(2)
            continue
        command: list[str] = []
        for tok in tokens:
            if tok in SEPARATORS:
                if command:
                    out.append(command)
                command = []
            else:
                command.append(tok)
        if command:
            out.append(command)
    return out


def _program(cmd: list[str]) -> tuple[str, list[str]]:
    """The program and its arguments, past environment assignments (``FOO=1 p4r ...``)."""
    i = 0
    while i < len(cmd) and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", cmd[i]):
        i += 1
    return (cmd[i], cmd[i + 1 :]) if i < len(cmd) else ("", [])


def check_p4r(args: list[str]) -> list[str]:
    """Problems with one `p4r` command line: unknown subcommands or options, by the click tree."""
    command: click.Command = main
    path = ["p4r"]
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        sub = command.commands.get(name)
        if sub is None:
            return [f"{' '.join(path)}: no subcommand {name!r} (has: {', '.join(sorted(command.commands))})"]
        command, path = sub, [*path, name]
    if isinstance(command, click.Group) and not rest:
        return []
    known = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option):
            known.update(param.opts)
            known.update(param.secondary_opts)
    problems = []
    for tok in rest:
        if tok.startswith("-") and tok != "-" and not re.fullmatch(r"-\d.*", tok):
            opt = tok.split("=", 1)[0]
            if opt not in known:
                problems.append(f"{' '.join(path)}: no option {opt} (has: {', '.join(sorted(known))})")
    return problems


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"(?m)^([a-zA-Z][\w-]*):(?!=)", text))


def check_command(cmd: list[str], page: Path) -> list[str]:
    prog, args = _program(cmd)
    name = Path(prog).name
    problems: list[str] = []
    if name == "p4r":
        problems += check_p4r(args)
        for flag, value in zip(args, args[1:], strict=False):
            if flag in ("-c", "--config") and not (REPO / value).is_file():
                problems.append(f"p4r {flag} {value}: no such file")
    elif name == "make":
        targets = [a for a in args if not re.fullmatch(r"[\w.-]+=.*", a) and not a.startswith("-")]
        problems += [f"make {t}: no such target in the Makefile" for t in targets if t not in make_targets()]
    elif name == "python" or name.startswith("python3"):
        script = next((a for a in args if a.endswith(".py")), None)
        if script and not script.startswith("../") and not (REPO / script).is_file():
            problems.append(f"python {script}: no such file")
    return [f"{page.relative_to(REPO)}: {' '.join(cmd)}\n    {p}" for p in problems]


def test_readme_and_first_pages_name_only_existing_commands_and_options():
    problems, checked = [], 0
    for page in PAGES:
        for lang, body in fenced_blocks(page.read_text(encoding="utf-8")):
            if lang not in SHELL_FENCES:
                continue
            for cmd in shell_commands(body):
                checked += 1
                problems += check_command(cmd, page)
    assert checked > 20
    assert not problems, "\n".join(problems)


def test_readme_commands_include_the_two_commands_and_doctor():
    cmds = [
        " ".join([prog, *args])
        for lang, body in fenced_blocks(README.read_text())
        if lang in SHELL_FENCES
        for prog, args in map(_program, shell_commands(body))
    ]
    assert "make run" in cmds and "make test" in cmds
    assert any(c.split()[0].endswith("p4r") and c.split()[1] == "doctor" for c in cmds)


def test_the_checker_catches_what_does_not_exist():
    assert check_p4r(["run", "-c", "x.yaml", "--force"]) == []
    assert check_p4r(["data", "fetch", "amazon2014-musical-instruments", "--dest", "/tmp"]) == []
    assert check_p4r(["doctor", "--timeout", "1", "index.uri=http://x:1"]) == []
    assert "no subcommand 'frobnicate'" in check_p4r(["frobnicate"])[0]
    assert "no option --no-such-flag" in check_p4r(["run", "--no-such-flag"])[0]
    assert "no option --bogus" in check_p4r(["jobs", "logs", "ID", "--bogus"])[0]
    cmds = shell_commands('D="-d mi -c conf/x.yaml"\np4r run $D --until reason  # comment\nmake run && make test')
    assert cmds == [["p4r", "run", "-d", "mi", "-c", "conf/x.yaml", "--until", "reason"], ["make", "run"],
                    ["make", "test"]]  # fmt: skip
    assert check_command(["make", "no-such-target"], README)
    assert check_command(["p4r", "run", "-c", "conf/experiments/none.yaml"], README)


def test_relative_links_resolve():
    missing = []
    for page in [*PAGES]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                missing.append(f"{page.relative_to(REPO)}: {target}")
    assert not missing, missing


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 200


def test_readme_headline_numbers_are_the_committed_reports():
    """Every number of the README's headline table is in the committed headline report."""
    text = README.read_text()
    table = text.split("## Headline result", 1)[1].split("\n\n| candidates |", 1)[1].split("\n\n", 1)[0]
    report = (REPO / "benchmarks" / "headline-musical-instruments" / "report.md").read_text()
    numbers = re.findall(r"\b0\.\d{4}\b|[+-]\d+\.\d%", table)
    assert len(numbers) > 30
    missing = [n for n in numbers if n not in report and n.replace("-", "−") not in report]
    paper = {"+8.1%", "+10.2%", "+7.5%", "+10.9%"}  # the paper's gains, from the report's paper rows too
    assert not [n for n in missing if n not in paper], missing
