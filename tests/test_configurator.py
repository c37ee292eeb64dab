"""configurator.py: config files and --key=value flags over a script's globals.
Run: python -m pytest -q tests/test_configurator.py"""
import os
import re
import subprocess
import sys

import pytest

from configurator import ConfigError, UserError, apply_overrides, configure, make_dir
from conftest import REPO, assert_one_line_error


def settings(**extra):
    ns = dict(batch_size=12, learning_rate=6e-4, compile=True, dataset='owt', wandb_run_name='gpt2',
              top_k=200, seed=None, __file__=str(REPO / 'train.py'), _optional=('top_k',))
    ns.update(extra)
    return ns


def test_file_then_flags_in_order(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("import math\nbatch_size = 64\nlearning_rate = 1e-3 * math.sqrt(4)\ndataset = 'x'\n")
    ns = settings()
    changed = apply_overrides(ns, [str(cfg), '--batch_size=32', '--compile=false'])
    assert (ns['batch_size'], ns['learning_rate'], ns['dataset'], ns['compile']) == (32, 2e-3, 'x', False)
    assert changed == {'batch_size': 32, 'learning_rate': 2e-3, 'dataset': 'x', 'compile': False}


def test_value_parsing():
    ns = settings()
    apply_overrides(ns, ['--learning_rate=1', '--wandb_run_name=2024', '--dataset=a=b', '--top_k=None',
                         '--compile=TRUE', '--seed=7'])
    assert ns['learning_rate'] == 1.0 and type(ns['learning_rate']) is float  # int widens to float
    assert ns['wandb_run_name'] == '2024' and ns['dataset'] == 'a=b'  # text stays text
    assert ns['top_k'] is None and ns['compile'] is True and ns['seed'] == 7
    apply_overrides(ns, ['--compile'])  # a bare bool flag means True
    assert ns['compile'] is True


@pytest.mark.parametrize('argv, message', [
    (['--batch_size=1.5'], "batch_size=1.5 (from --batch_size=1.5): expected int, got float"),
    (['--batch_size=True'], "expected int, got bool"),
    (['--compile=yes'], "expected bool, got str"),
    (['--learning_rate=None'], "expected float, got NoneType"),
    (['--learing_rate=1e-3'], "unknown config key 'learing_rate' (from --learing_rate=1e-3); did you mean 'learning_rate'?"),
    (['--batch_size'], "--batch_size: expected --batch_size=VALUE"),
    (['nowhere.py'], "config file 'nowhere.py' not found"),
    (['batch_size=3'], "config file 'batch_size=3' not found; did you mean --batch_size=3?"),  # dashes forgotten
])
def test_mistakes_are_config_errors(argv, message):
    with pytest.raises(ConfigError) as e:
        apply_overrides(settings(), argv)
    assert message in str(e.value)


def test_unknown_or_mistyped_key_in_a_config_file(tmp_path):
    cfg = tmp_path / 'typo.py'
    cfg.write_text("learing_rate = 1e-3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'learing_rate' \(from .*typo.py\); did you mean"):
        apply_overrides(settings(), [str(cfg)])
    # a helper variable: the message says how to keep it (it said only 'see --help')
    cfg.write_text("_tokens = 1000\ntokens = 2000\nbatch_size = _tokens // 100\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'tokens' .*; a helper variable in a config file "
                                          r"needs a leading _ \(_tokens\)$"):
        apply_overrides(settings(), [str(cfg)])
    cfg.write_text("_tokens = 1000\nbatch_size = _tokens // 100\n")
    assert apply_overrides(settings(), [str(cfg)]) == {'batch_size': 10}
    cfg.write_text("batch_size = '12'\n")
    with pytest.raises(ConfigError, match="expected int, got str"):
        apply_overrides(settings(), [str(cfg)])
    cfg.write_text("batch_size = 1 / 0\n")
    with pytest.raises(ConfigError, match="failed: ZeroDivisionError"):
        apply_overrides(settings(), [str(cfg)])


def test_config_files_resolve_from_the_script_folder(tmp_path, monkeypatch):
    (tmp_path / 'repo' / 'config').mkdir(parents=True)
    (tmp_path / 'repo' / 'config' / 'small.py').write_text("batch_size = 64\n")
    (tmp_path / 'elsewhere').mkdir()
    monkeypatch.chdir(tmp_path / 'elsewhere')
    ns = settings(__file__=str(tmp_path / 'repo' / 'train.py'))
    apply_overrides(ns, ['config/small.py'])
    assert ns['batch_size'] == 64


def test_configure_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        configure(settings(), ['--batch_size=x'])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: batch_size='x'") and err.count('\n') == 1


def test_every_shipped_config_applies_to_train_py(script):
    """Each config/*.py only sets keys train.py (or bench.py) knows, with the right types."""
    p = script('train.py', '--help')
    assert '--learning_rate=0.0006' in p.out and '--init_from=' in p.out
    known = {line.split('=')[0].strip()[2:] for line in p.out.splitlines() if line.startswith('  --')}
    for cfg in sorted((REPO / 'config').glob('*.py')):
        if cfg.name.startswith('bench'):
            continue
        ns = {k: None for k in known}
        exec(cfg.read_text(), ns)
        assert {k for k in ns if not k.startswith('_') and k not in ('time', 'math')} <= known, cfg.name


def test_train_py_cli_errors(script):
    p = script('train.py', '--learing_rate=1', check=False)
    assert p.code == 2 and p.err == ("error: unknown config key 'learing_rate' (from --learing_rate=1); did you "
                                     "mean 'learning_rate'?\n")
    p = script('train.py', '--batch_size=abc', check=False)
    assert p.code == 2 and p.err == "error: batch_size='abc' (from --batch_size=abc): expected int, got str\n"


def test_help_into_a_closed_pipe_is_quiet():
    """Regression: `python train.py --help | head -1` ended in a BrokenPipeError traceback."""
    p = subprocess.Popen([sys.executable, str(REPO / 'train.py'), '--help'], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # before the child writes: its first write meets a closed pipe
    assert p.wait(timeout=60) == 0 and p.stderr.read() == b''


def test_settings_given_in_a_config_file_count_even_at_their_default(tmp_path):
    """Regression: a config file that set a setting to its default's value (n_layer = 12) did not count it
    as given, so a resumed run could not tell it from an untouched default."""
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("batch_size = 12\ncompile = True\n")
    assert apply_overrides(settings(), [str(cfg), '--seed=None']) == {'batch_size': 12, 'compile': True, 'seed': None}


def test_declared_checks(capsys):
    ns = settings(_positive=('batch_size', 'top_k'), _non_negative=('learning_rate',))
    with pytest.raises(ConfigError, match=r"^batch_size=0 must be positive$"):
        apply_overrides(dict(ns), ['--batch_size=0'])
    with pytest.raises(ConfigError, match=r"^learning_rate=-0.1 must be >= 0$"):
        apply_overrides(dict(ns), ['--learning_rate=-0.1'])
    apply_overrides(dict(ns), ['--top_k=None'])  # an optional setting turned off is not checked
    config, given = configure(dict(ns), ['--batch_size=3'])
    assert config['batch_size'] == 3 and given == {'batch_size': 3}
    assert 'Overriding: batch_size = 3' in capsys.readouterr().out


def test_help_shows_each_settings_comment(script):
    """Regression: --help listed --key=default with no words; it shows the comment beside each setting."""
    p = script('train.py', '--help')
    assert re.search(r"^  --eval_iters=200 +batches per split in each evaluation$", p.out, re.M), p.out
    assert re.search(r"^  --grad_clip=1.0 +clip gradients at this norm; 0.0 disables$", p.out, re.M)
    p = script('data/openwebtext/prepare.py', '--help')
    assert re.search(r"^  --num_proc=\d+ +tokenizer processes$", p.out, re.M), p.out


def test_a_file_setting_names_the_file_and_its_folder(tmp_path, script, trained, monkeypatch):
    """Regression: export.py --weights=DIR/x.pt blamed the folder as if it were the setting's value
    ("weights 'DIR' is not writable"); the message names the file given and its folder."""
    (tmp_path / 'afile').write_text('not a folder')
    for target, problem in [(tmp_path / 'afile' / 'sub' / 'x.pt',
                             f"cannot create its folder {tmp_path / 'afile' / 'sub'} (Not a directory)"),
                            (tmp_path / 'afile' / 'x.pt', f"its folder {tmp_path / 'afile'} is a file, not a folder")]:
        p = script('export.py', f'--out_dir={trained.out}', f'--weights={target}', check=False)
        assert_one_line_error(p, f"--weights={target}: {problem}; choose another with --weights=")
    # tests run as root, who may write into a read-only folder: let os.access say no instead
    monkeypatch.setattr(os, 'access', lambda path, mode: False)
    with pytest.raises(UserError) as e:
        make_dir('x.pt', 'weights', file=True)
    assert e.value.msg == f"--weights=x.pt: its folder {os.getcwd()} is not writable; choose another with --weights="
