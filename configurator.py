"""Settings for the scripts: module-level globals, overridden by config files and --key=value flags.

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

An argument without '--' is a config file of plain assignments, exec'd over the settings; '--key=value'
sets one setting. The new value must have the default's type (an int is accepted for a float), bools
are true/false in any case, `--flag` alone means --flag=True, and None is accepted where the default is
None or the script lists the name in its `_optional` tuple. Mistakes end with one line and exit code 2.
"""
import ast
import difflib
import os
import sys
import types

KNOB_TYPES = (bool, int, float, str, type(None))


class ConfigError(ValueError):
    pass


def knobs(ns):
    """The overridable settings of a script's globals: public names holding a plain value."""
    return {k: v for k, v in ns.items() if not k.startswith('_') and type(v) in KNOB_TYPES}


def _unknown(key, known, origin):
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "; see --help"
    return ConfigError(f"unknown config key {key!r} ({origin}){hint}")


def _check(key, value, default, optional, origin):
    """value if it fits the setting's type (int widened to float), else ConfigError."""
    if value is None and (default is None or key in optional):
        return value
    if default is None and type(value) in KNOB_TYPES:
        return value
    if type(value) is type(default):
        return value
    if type(default) is float and type(value) is int:
        return float(value)
    raise ConfigError(f"{key}={value!r} ({origin}): expected {type(default).__name__}, "
                      f"got {type(value).__name__}")


def _parse(key, text, default, optional):
    """Turn the text of --key=text into a value of the setting's type."""
    if isinstance(default, bool) and text.lower() in ('true', 'false'):
        return text.lower() == 'true'
    if isinstance(default, str) and not (text == 'None' and key in optional):
        return text  # string settings take the text as given, even '2024' or 'a=b'
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(ns, argv, verbose=False):
    """Apply config files and --key=value arguments to the dict ns in order; returns {key: new value}."""
    defaults = knobs(ns)
    optional = set(ns.get('_optional', ()))
    script_dir = os.path.dirname(os.path.abspath(ns.get('__file__', sys.argv[0])))
    changed = {}
    for arg in argv:
        if not arg.startswith('--'):
            path = arg if os.path.exists(arg) else os.path.join(script_dir, arg)
            if not os.path.isfile(path):
                raise ConfigError(f"config file {arg!r} not found")
            origin = f"from {arg}"
            scope = dict(ns)
            try:
                with open(path) as f:
                    exec(compile(f.read(), path, 'exec'), scope)
            except Exception as e:
                raise ConfigError(f"config file {arg} failed: {type(e).__name__}: {e}") from e
            if verbose:
                print(f"Overriding config with {arg}")
            for key, value in scope.items():
                if key.startswith('_') or isinstance(value, types.ModuleType) or callable(value):
                    continue
                if key not in defaults:
                    if key in ns:  # a script global that is not a setting (a module, a function)
                        continue
                    raise ConfigError(f"{_unknown(key, defaults, origin)}; a helper variable in a config file "
                                      f"needs a leading _ (_{key})")
                if key in ns and value is ns[key]:
                    continue
                changed[key] = ns[key] = _check(key, value, defaults[key], optional, origin)
        else:
            key, eq, text = arg[2:].partition('=')
            if key in ('h', 'help'):
                raise ConfigError("--help takes no value")
            if key not in defaults:
                raise _unknown(key, defaults, f"from {arg}")
            if not eq:
                if not isinstance(defaults[key], bool):
                    raise ConfigError(f"{arg}: expected --{key}=VALUE")
                text = 'True'
            value = _parse(key, text, defaults[key], optional)
            changed[key] = ns[key] = _check(key, value, defaults[key], optional, f"from {arg}")
    if verbose:
        for key, value in changed.items():
            print(f"Overriding: {key} = {value!r}")
    return changed


def drop_stdout():
    """After a BrokenPipeError (the reader of stdout has quit, e.g. | head): send the rest of stdout, and
    what is still buffered, to /dev/null, so later prints and the exit's flush raise nothing."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def configure(ns, argv=None):
    """apply_overrides on sys.argv[1:]; --help lists the settings. Returns every setting's final value."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ('-h', '--help') for a in argv):
        lines = [f"usage: python {os.path.basename(sys.argv[0])} [config_file.py ...] [--key=value ...]",
                 "settings (default):"] + [f"  --{key}={value!r}" for key, value in knobs(ns).items()]
        try:
            print('\n'.join(lines), flush=True)
        except BrokenPipeError:  # --help | head: the reader has what it wanted
            drop_stdout()
        sys.exit(0)
    quiet = int(os.environ.get('RANK', '0')) != 0  # under torchrun, only rank 0 talks
    try:
        apply_overrides(ns, argv, verbose=not quiet)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return knobs(ns)
