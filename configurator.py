"""Settings for the scripts: module-level globals, overridden by config files and --key=value flags,
and the one way every script reports a mistake the user can fix.

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

An argument without '--' is a config file of plain assignments, exec'd over the settings; '--key=value'
sets one setting. The new value must have the default's type (an int is accepted for a float), bools
are true/false in any case, `--flag` alone means --flag=True, and None is accepted where the default is
None or the script lists the name in its `_optional` tuple. A script may also declare `_positive` and
`_non_negative` tuples of settings, checked once every override is in. A mistake ends with one
`error: ...` line on stderr and exit code 2 (fail); a traceback always means a bug.
"""
import ast
import difflib
import os
import signal
import sys
import time
import tokenize
import types

KNOB_TYPES = (bool, int, float, str, type(None))


class ConfigError(ValueError):
    pass


class UserError(SystemExit):
    """What fail() raises: exit code 2, and the message as its text (for whoever catches it)."""

    def __init__(self, msg):
        super().__init__(2)
        self.msg = msg

    def __str__(self):
        return f"error: {self.msg}"


def fail(msg):
    """A mistake the user can fix: one 'error: ...' line on stderr, exit code 2, no traceback. Under
    torchrun every process meets the same mistake, and the first one on each node prints it. The others
    wait: torchrun stops them as soon as that one exits, unless the mistake is theirs alone."""
    if int(os.environ.get('LOCAL_RANK', '0')):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # torchrun's stop ends the wait at once
        time.sleep(5)
        msg = f"{msg} (rank {os.environ.get('RANK')})"
    print(f"error: {msg}", file=sys.stderr, flush=True)
    raise UserError(msg)


def oneline(e):
    """An exception as one line of at most ~300 characters (an EOFError's message is empty)."""
    text = ': '.join([type(e).__name__] + [' '.join(str(e).split())] * bool(str(e).strip()))
    return text if len(text) <= 300 else text[:297] + '...'


def make_dir(path, setting='out_dir', create=True, file=False):
    """Check (and with create, make) the folder a setting names, or with file, the folder of the file it
    names; a problem is one line naming the setting (and then the file as given, and its folder)."""
    folder = os.path.dirname(os.path.abspath(path)) if file else path
    given, what = (f"--{setting}={path}: ", f"its folder {folder}") if file else ("", f"{setting} {path!r}")
    fix = f"choose another with --{setting}="
    if os.path.exists(folder) and not os.path.isdir(folder):
        fail(f"{given}{what} is a file, not a folder; {fix}")
    if not create:
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        fail(f"{given}cannot create {what} ({e.strerror}); {fix}")
    if not os.access(folder, os.W_OK):
        fail(f"{given}{what} is not writable; {fix}")


def drop_stdout():
    """After a BrokenPipeError (the reader of stdout has quit, e.g. | head): send the rest of stdout, and
    what is still buffered, to /dev/null, so later prints and the exit's flush raise nothing."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


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


def _apply_file(ns, arg, defaults, optional, script_dir, changed):
    path = arg if os.path.exists(arg) else os.path.join(script_dir, arg)
    if not os.path.isfile(path):
        hint = f"; did you mean --{arg}?" if '=' in arg and not arg.endswith('.py') else ""
        raise ConfigError(f"config file {arg!r} not found{hint}")
    origin = f"from {arg}"
    scope = dict(ns)
    try:
        with open(path) as f:
            source = f.read()
        code = compile(source, path, 'exec')
        exec(code, scope)
    except Exception as e:
        raise ConfigError(f"config file {arg} failed: {type(e).__name__}: {e}") from e
    # the names it assigns count as given even when the value is the default's (n_layer = 12)
    assigned = {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    for key, value in scope.items():
        if key.startswith('_') or isinstance(value, types.ModuleType) or callable(value):
            continue
        if key not in defaults:
            if key in ns:  # a script global that is not a setting (a module, a function)
                continue
            raise ConfigError(f"{_unknown(key, defaults, origin)}; a helper variable in a config file "
                              f"needs a leading _ (_{key})")
        if key in assigned or value is not ns[key]:
            changed[key] = ns[key] = _check(key, value, defaults[key], optional, origin)


def apply_overrides(ns, argv):
    """Apply config files and --key=value arguments to the dict ns in order, then the declared checks;
    returns {key: new value} for every setting they gave."""
    defaults = knobs(ns)
    optional = set(ns.get('_optional', ()))
    script_dir = os.path.dirname(os.path.abspath(ns.get('__file__', sys.argv[0])))
    changed = {}
    for arg in argv:
        if not arg.startswith('--'):
            _apply_file(ns, arg, defaults, optional, script_dir, changed)
            continue
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
    for names, ok, rule in (('_positive', lambda v: v > 0, 'positive'), ('_non_negative', lambda v: v >= 0, '>= 0')):
        for key in ns.get(names, ()):
            if ns[key] is not None and not ok(ns[key]):
                raise ConfigError(f"{key}={ns[key]!r} must be {rule}")
    return changed


def _comments(path):
    """{setting: its trailing comment} from a script's `name = value  # comment` (or `'name': value,  #
    comment`) lines: what --help shows beside each setting."""
    comments, key = {}, {}
    try:
        with open(path, encoding='utf-8') as f:
            tokens = list(tokenize.generate_tokens(f.readline))
    except (OSError, SyntaxError, tokenize.TokenError):
        return comments
    for tok, nxt in zip(tokens, tokens[1:]):
        if (tok.type == tokenize.NAME and tok.start[1] == 0 and nxt.string == '=') or \
                (tok.type == tokenize.STRING and nxt.string == ':'):
            key[tok.start[0]] = tok.string.strip('\'"')
        elif tok.type == tokenize.COMMENT and tok.start[0] in key:
            comments.setdefault(key[tok.start[0]], tok.string.lstrip('#').strip())
    return comments


def configure(ns, argv=None):
    """apply_overrides on sys.argv[1:], printing what changed; --help lists the settings with the comments
    beside them. Returns (every setting's final value, the settings the user gave with their values)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ('-h', '--help') for a in argv):
        comments = _comments(ns.get('__file__', sys.argv[0]))
        width = max((len(f"--{k}={v!r}") for k, v in knobs(ns).items()), default=0) + 2
        lines = [f"usage: python {os.path.basename(sys.argv[0])} [config_file.py ...] [--key=value ...]",
                 "settings (default):"] + [f"  {f'--{k}={v!r}':<{width}}{comments.get(k, '')}".rstrip()
                                           for k, v in knobs(ns).items()]
        try:
            print('\n'.join(lines), flush=True)
        except BrokenPipeError:  # --help | head: the reader has what it wanted
            drop_stdout()
        sys.exit(0)
    try:
        changed = apply_overrides(ns, argv)
    except ConfigError as e:
        fail(e)
    if int(os.environ.get('RANK', '0')) == 0:  # under torchrun, only rank 0 talks
        for arg in argv:
            if not arg.startswith('--'):
                print(f"Overriding config with {arg}")
        for key, value in changed.items():
            print(f"Overriding: {key} = {value!r}")
    return knobs(ns), changed
