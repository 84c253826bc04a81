"""
nanoGPT's poor man's configurator, without its holes. A script defines its defaults as plain globals, then runs
    exec(open('configurator.py').read())
which applies, in order, every config file and every --key=value named on the command line:
    python train.py config/small.py --lr=5e-5 --out_dir=out-try
A config file is plain assignments. A value is read as a Python literal when it is one (--lr=1 is 1.0 because the
default is a float), else kept as a string (--device=cuda); a bare --flag sets a False default to True.
Unknown keys and wrong types stop with a one-line error.
It is exec'd, not imported, so it can write the caller's globals; names starting with _ stay private.
"""
import sys
from ast import literal_eval
from difflib import get_close_matches

# the one rule for what a key is: a script's lower-case globals that hold plain values (defined before this runs);
# upper-case constants, modules, functions and _private names are not keys. The script reads them back as config_keys.
_keys = sorted(k for k, v in globals().items() if not k.startswith('_') and k.islower()
               and isinstance(v, (int, float, bool, str, tuple)))
config_keys = _keys


def _override(key, val, where):
    if key not in _keys:
        close = get_close_matches(key, _keys, n=3)
        hint = globals().get('_elsewhere', {}).get(key) or (f"did you mean {' or '.join(repr(c) for c in close)}? "
                                                            if close else '')   # _elsewhere: keys another script sets
        sys.exit(f"{where}: unknown config key '{key}'; {hint}valid keys: {', '.join(_keys)}")
    old = globals()[key]
    if type(old) is float and type(val) is int:
        val = float(val)                                    # let --lr=1 mean 1.0
    if type(old) is tuple and type(val) is list:
        val = tuple(val)
    if old is not None and type(val) is not type(old):
        sys.exit(f"{where}: {key} must be {type(old).__name__} like the default {old!r}, got {val!r}")
    globals()[key] = val


def _at_least(least, *keys):
    """For the script, after this file has run: exit in one line at the first key below least (a count, a size)."""
    for key in keys:
        if globals()[key] < least:
            sys.exit(f"--{key}={globals()[key]} must be {least} or more")


for _arg in sys.argv[1:]:
    if _arg in ('-h', '--help'):
        _help = ''.join(f"\n  --{_k}={globals()[_k]!r}" for _k in _keys)
        try:
            print(f"usage: python {sys.argv[0]} [config/FILE.py ...] [--key=value ...]\nkeys and defaults:{_help}",
                  flush=True)
        except BrokenPipeError:                             # --help | head: the reader has all it wanted
            sys.stdout = None                               # nothing left to flush at exit
        sys.exit(0)
    if _arg.startswith('--'):                               # --key=value, a Python literal if it is one
        _key, _eq, _raw = _arg[2:].partition('=')
        if not _eq and (_key not in _keys or globals()[_key] is False):
            _val = True                                     # a bare --flag switches a False default on
        elif not _eq:
            sys.exit(f"command line: '{_arg}' needs a value, like --{_key}=...")
        elif isinstance(globals()[_key] if _key in _keys else None, str):
            _val = _raw                                     # a string key takes the text as it is: --out_dir=2024
        else:
            try:
                _val = literal_eval(_raw)
            except (ValueError, SyntaxError):
                _val = _raw                                 # bare words stay strings: --device=cuda
        _override(_key, _val, 'command line')
    elif _arg.endswith('.py'):                              # a config file of plain assignments, own namespace
        try:
            _src = open(_arg).read()
        except (OSError, UnicodeDecodeError) as _e:
            sys.exit(f"cannot read config file {_arg}: {getattr(_e, 'strerror', None) or 'not UTF-8 text'}; the "
                     f"presets are in config/")
        _ns = {}
        try:
            exec(_src, {}, _ns)
        except (Exception, SystemExit) as _e:               # a typo, or a sys.exit(), in the file: say which and what
            sys.exit(f"config file {_arg} does not run: {type(_e).__name__}: {_e}".rstrip(": "))
        print(f"config {_arg}: {', '.join(f'{k}={v!r}' for k, v in _ns.items())}")
        for _key, _val in _ns.items():
            _override(_key, _val, _arg)
    else:
        _positional = globals().get('_positional')
        if _positional is None:
            sys.exit(f"command line: don't know what to do with '{_arg}'; use config/FILE.py or --key=value")
        _positional.append(_arg)                            # a script that takes plain arguments (viz.py) says so
