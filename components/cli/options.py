"""What both command lines do with their flags beyond argparse: help with the defaults, ``--config
FILE`` (YAML), ``--print-config``, and which flags the user gave explicitly.

A config file is a YAML mapping whose keys are long option names, with dashes or underscores
(``train-epochs: 3``, ``epochs: 3``, ``train_epochs: 3``); ``null`` leaves an option at its
default. Flags on the command line override the file. ``--print-config`` writes the effective
options in the same form, so its output loads back with ``--config``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from components.contracts.errors import ParameterError

CONFIG_FLAG, PRINT_CONFIG_FLAG = "--config", "--print-config"
#: Flags that are about the command itself, never keys of a config file.
_NOT_CONFIG = {"help", "config", "print_config", "debug"}


def parse_bool(text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no) as an option's value."""
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


#: What each option type expects, in words.
_KINDS = {int: "an integer", float: "a number", parse_bool: "true or false", Path: "a path"}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and ``(default: X)`` after every option that has one and does
    not state it already."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, argparse.SUPPRESS, "") or action.nargs == 0
                or not action.option_strings or default == []):
            return text
        return f"{text} (default: {default})" if text else f"(default: {default})"


def add_config_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """``--config FILE`` and ``--print-config`` on ``parser``; ``what`` names its options in the help."""
    parser.add_argument(CONFIG_FLAG, type=Path, default=None, metavar="FILE",
                        help=f"YAML file of {what}: keys are the long option names (dashes or underscores); "
                             "flags given here override it")
    parser.add_argument(PRINT_CONFIG_FLAG, action="store_true",
                        help="print the effective options as YAML (loadable with --config) and exit")


def config_path(argv: Sequence[str]) -> Path | None:
    """The ``--config`` of ``argv`` (before a ``--``), read before parsing so that the file can
    supply required options."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument(CONFIG_FLAG, type=Path, default=None)
    end = list(argv).index("--") if "--" in argv else len(argv)
    known, _ = pre.parse_known_args(list(argv)[:end])
    return known.config


def option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each long option string of ``parser`` (``--train-epochs``) and its action."""
    return {s: a for s, a in parser._option_string_actions.items() if s.startswith("--")}


def read_config(path: Path) -> dict[str, Any]:
    """The mapping of YAML file ``path``.

    Raises:
        ParameterError: missing, unreadable, not YAML, or not a mapping.
    """
    import yaml

    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ParameterError(f"--config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ParameterError(f"--config {path}: not valid YAML: {exc}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ParameterError(f"--config {path}: expected a mapping of option names to values, "
                             f"got {type(document).__name__}")
    return document


def _scalar(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, (dict, list)):
        raise ParameterError(f"{where}: expected a single value, got {type(value).__name__}")
    convert = action.type
    if convert in (None, str):  # a string option: a YAML number or boolean is a mistake, not a string
        if not isinstance(value, str):
            raise ParameterError(f"{where}: expected a string, got {value!r} (quote it)")
        result = value
    else:
        if isinstance(value, bool) and convert in (int, float):
            raise ParameterError(f"{where}: expected a number, got {value!r}")
        try:
            result = convert(value if isinstance(value, str) else str(value))
        except argparse.ArgumentTypeError as exc:  # the option's own words
            raise ParameterError(f"{where}: {exc}") from None
        except (TypeError, ValueError):
            raise ParameterError(f"{where}: expected {_KINDS.get(convert, 'another value')}, got {value!r}") from None
    if action.choices is not None and result not in action.choices:
        raise ParameterError(f"{where}: {result!r} is not one of {', '.join(map(str, action.choices))}")
    return result


def config_values(path: Path, parser: argparse.ArgumentParser, refused: Mapping[str, str] = {}) -> dict[str, Any]:
    """The options of config file ``path``, by destination, checked as ``parser`` would check them.

    Args:
        refused: option strings that are no config keys (``--run-local``), and why.

    Raises:
        ParameterError: naming the file and the key, for an unknown key or a wrong type.
    """
    actions = option_actions(parser)
    values: dict[str, Any] = {}
    for key, value in read_config(path).items():
        option = "--" + str(key).strip().replace("_", "-")
        where = f"{path}: {key}"
        if option in refused:
            raise ParameterError(f"{where}: not a config key ({refused[option]})")
        action = actions.get(option)
        if action is None or action.dest in _NOT_CONFIG:
            raise ParameterError(f"{where}: unknown option (known: {', '.join(sorted(config_keys(parser)))})")
        if value is None:
            continue
        if action.nargs == 0:  # a switch: store_true, store_false, store_const
            if not isinstance(value, bool):
                raise ParameterError(f"{where}: expected true or false, got {value!r}")
            if isinstance(action, argparse.BooleanOptionalAction):  # --channels-last / --no-channels-last
                values[action.dest] = value if not option.startswith("--no-") else not value
                continue
            if isinstance(action, argparse._StoreConstAction) and not isinstance(action, argparse._StoreTrueAction):
                if value:  # --no-augment: true; false leaves the other flag of the same option to decide
                    values[action.dest] = action.const
                continue
            values[action.dest] = value if isinstance(action, argparse._StoreTrueAction) else not value
        elif isinstance(action, argparse._AppendAction):
            items = value if isinstance(value, list) else [value]
            values[action.dest] = [_scalar(action, item, where) for item in items]
        else:
            values[action.dest] = _scalar(action, value, where)
    return values


def config_keys(parser: argparse.ArgumentParser) -> list[str]:
    """The canonical config keys of ``parser``: each option's first long name, without dashes."""
    seen, keys = set(), []
    for action in parser._actions:
        if action.dest in _NOT_CONFIG or action.dest in seen or not action.option_strings:
            continue
        seen.add(action.dest)
        keys.append(action.option_strings[0].removeprefix("--"))
    return keys


def apply_config(parser: argparse.ArgumentParser, values: Mapping[str, Any]) -> None:
    """Make ``values`` (by destination) the defaults of ``parser``; an option they supply is no
    longer required on the command line. A repeatable option's list is filled in after parsing
    (:func:`fill_repeated`), so that the command line's items replace the file's."""
    repeated = {a.dest for a in parser._actions if isinstance(a, argparse._AppendAction)}
    parser.set_defaults(**{dest: value for dest, value in values.items() if dest not in repeated})
    for action in parser._actions:
        if action.dest in values:
            action.required = False


def fill_repeated(parser: argparse.ArgumentParser, args: argparse.Namespace, values: Mapping[str, Any]) -> None:
    """The config file's items of each repeatable option the command line did not give."""
    for action in parser._actions:
        if isinstance(action, argparse._AppendAction) and action.dest in values:
            if getattr(args, action.dest) is action.default:  # argparse copies the default to append
                setattr(args, action.dest, list(values[action.dest]))


def _suppress(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False if action.option_strings else action.required
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _suppress(sub)
    parser._defaults.clear()


def explicit_dests(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations that ``argv`` sets on the command line, whatever their value (a flag given
    with its default value counts; an option left to its default or to the config file does not)."""
    bare = copy.deepcopy(parser)
    _suppress(bare)
    return set(vars(bare.parse_args(list(argv)))) - {"stage"}


def effective_config(parser: argparse.ArgumentParser, args: argparse.Namespace,
                     keep: Callable[[argparse.Action], bool] = lambda action: True,
                     values: Mapping[str, Any] | None = None,
                     to_yaml: Callable[[str, Any], Any] | None = None) -> dict[str, Any]:
    """The options of ``args`` as a config mapping: first long name -> value.

    Args:
        keep: which of ``parser``'s actions belong in it.
        values: values by destination that replace those of ``args`` (the pipeline's effective
            parameters).
        to_yaml: turns a value that YAML cannot hold into one it can, by destination.
    """
    config = {}
    seen: set[str] = set()
    for action in parser._actions:
        dest = action.dest
        if dest in _NOT_CONFIG or dest in seen or not action.option_strings or not keep(action):
            continue
        seen.add(dest)
        value = values[dest] if values is not None and dest in values else getattr(args, dest, None)
        if to_yaml is not None:
            value = to_yaml(dest, value)
        config[action.option_strings[0].removeprefix("--")] = _plain(value)
    return config


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dump_config(config: Mapping[str, Any]) -> str:
    """``config`` as YAML, in its own order."""
    import yaml

    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False, allow_unicode=True)


def given(explicit: Iterable[str], config: Mapping[str, Any]) -> set[str]:
    """The destinations the user chose: on the command line or in the config file."""
    return set(explicit) | set(config)
