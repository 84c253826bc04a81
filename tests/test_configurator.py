"""configurator.py, in-process: exec'd into a namespace of defaults with sys.argv monkeypatched, as train.py runs it."""
import os
import sys

import pytest

from conftest import ROOT


def configure(monkeypatch, argv, **defaults):
    """exec configurator.py into a namespace of defaults, as train.py does, with sys.argv = ['train.py', *argv]."""
    monkeypatch.setattr(sys, 'argv', ['train.py', *argv])
    ns = dict(defaults)
    exec(open(os.path.join(ROOT, 'configurator.py')).read(), ns)
    return ns


def test_configurator_applies_files_then_flags_with_types(monkeypatch, tmp_path):
    """A config file runs first, then --key=value; ints widen to float defaults; bare words stay strings."""
    cfg_file = tmp_path / 'c.py'
    cfg_file.write_text("lr = 0.5\nout_dir = 'from-file'\nmax_iters = 7\n")
    ns = configure(monkeypatch, [str(cfg_file), '--lr=1', '--device=cuda', '--compile=True', '--name=a=b', '--force',
                                 '--run=2024'],
                   lr=1e-3, out_dir='out', max_iters=100, device='cpu', compile=False, name='x', force=False, run='r')
    assert ns['lr'] == 1.0 and type(ns['lr']) is float
    assert (ns['out_dir'], ns['max_iters'], ns['device'], ns['compile'], ns['name']) == ('from-file', 7, 'cuda', True, 'a=b')
    assert ns['run'] == '2024'                                   # a string key keeps digits as text
    assert ns['force'] is True


@pytest.mark.parametrize('argv, message', [
    (['--learning_rat=0.1'], "unknown config key 'learning_rat'; did you mean 'learning_rate'"),
    (['--max_iters=3.5'], "max_iters must be int like the default 100, got 3.5"),
    (['--compile=yes'], "compile must be bool like the default False, got 'yes'"),
    (['--max_iters'], "'--max_iters' needs a value"),
    (['--compiel'], "unknown config key 'compiel'; did you mean 'compile'"),
    (['notaconfig'], "don't know what to do with 'notaconfig'"),
])
def test_configurator_errors_are_one_line_and_name_the_fix(monkeypatch, argv, message):
    """User mistakes end in a one-line SystemExit that says what was wrong."""
    with pytest.raises(SystemExit) as e:
        configure(monkeypatch, argv, learning_rate=1e-3, max_iters=100, compile=False)
    assert message in str(e.value) and '\n' not in str(e.value)


def test_configurator_rejects_unknown_key_in_config_file(monkeypatch, tmp_path):
    """A typo in a config file is caught too, naming the file (nanoGPT silently accepted it)."""
    cfg_file = tmp_path / 'typo.py'
    cfg_file.write_text("max_iter = 5\n")
    with pytest.raises(SystemExit, match=r"typo.py: unknown config key 'max_iter'; did you mean 'max_iters'"):
        configure(monkeypatch, [str(cfg_file)], max_iters=100)


def test_a_config_file_that_does_not_run_is_named_in_one_line(monkeypatch, tmp_path):
    cfg_file = tmp_path / 'broken.py'
    cfg_file.write_text("max_iters = 5\nlr = 3e-4 *\n")
    with pytest.raises(SystemExit, match=r"config file .*broken.py does not run: SyntaxError: .*line 2") as e:
        configure(monkeypatch, [str(cfg_file)], max_iters=100, lr=1e-3)
    assert '\n' not in str(e.value)
    cfg_file.write_text("import sys\nsys.exit()\n")                             # not a silent exit 0
    with pytest.raises(SystemExit, match=r"config file .*broken.py does not run: SystemExit$"):
        configure(monkeypatch, [str(cfg_file)], max_iters=100, lr=1e-3)
    cfg_file.write_bytes(b"max_iters = 5  # \xe9t\xe9\n")                         # Latin-1, not UTF-8
    with pytest.raises(SystemExit, match=r"cannot read config file .*broken.py: not UTF-8 text"):
        configure(monkeypatch, [str(cfg_file)], max_iters=100, lr=1e-3)


def test_configurator_keys_are_the_lower_case_plain_globals(monkeypatch):
    """One rule for every script: lower-case globals holding plain values are keys; constants and objects are not."""
    with pytest.raises(SystemExit, match="unknown config key 'MAX'"):
        configure(monkeypatch, ['--MAX=3'], lr=1e-3, MAX=5, path=os.path)
    ns = configure(monkeypatch, [], lr=1e-3, stem=(1, 2), MAX=5, path=os.path, _private=1)
    assert ns['config_keys'] == ['lr', 'stem']


def test_configurator_help_lists_keys(monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        configure(monkeypatch, ['--help'], lr=1e-3, max_iters=100)
    assert e.value.code == 0
    assert '--lr=0.001' in capsys.readouterr().out


def test_configurator_help_into_a_closed_pipe_exits_quietly(monkeypatch):
    """`python train.py --help | head -3`: the reader closing the pipe early is no error and prints no traceback."""
    class ClosedPipe:
        def write(self, *text):
            raise BrokenPipeError(32, 'Broken pipe')
        flush = write
    monkeypatch.setattr(sys, 'stdout', ClosedPipe())
    with pytest.raises(SystemExit) as e:
        configure(monkeypatch, ['--help'], lr=1e-3)
    assert e.value.code == 0 and sys.stdout is None                  # nothing left for the exit's flush


def test_at_least_names_the_first_key_below_its_least_value(monkeypatch):
    """The scripts' count and size checks: one line, the key and the value given."""
    ns = configure(monkeypatch, ['--iters=0'], iters=5, warmup=1)
    ns['_at_least'](0, 'iters', 'warmup')
    with pytest.raises(SystemExit, match=r"^--iters=0 must be 1 or more$"):
        ns['_at_least'](1, 'warmup', 'iters')
