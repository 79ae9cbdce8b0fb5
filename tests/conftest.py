"""Shared fixtures: import a numbered script as a module, and a tiny random Llama with its tokenizer.

The tiny model has the architecture of SmolLM2 (Llama, tied embeddings, grouped-query attention) at a
few thousand parameters, and a small BPE tokenizer trained here on the built-in task's text with a
ChatML chat template, so every test runs offline on two CPU cores in seconds.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (the README's `-n 2`), each worker and every stage it starts compute on one thread: two
# workers of two threads each on two cores contend (the suite took longer than in one process, not half).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)

LONGEST_FIRST = ("test_pipeline.py", "test_real_model.py", "test_standalone.py")   # ~2, ~1.5 and ~1 min


def pytest_configure(config):
    """With `-n 2 --dist loadfile` each file runs whole on one worker, and pytest-xdist hands out the files with
    the most tests first, which put these three (one or two tests, minutes each) last: one worker then ran
    them alone at the end. Files go out in the order below instead (the suite took ~45 s less)."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))   # stable: the rest as collected


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def load_script(name):
    """Import e.g. '04_dpo' as a module (its main() is not run)."""
    path = ROOT / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"stage_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_tiny(path, seed=0, vocab_size=400, hidden=32, layers=2):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    import builtin_task

    train, test = builtin_task.make_dataset(300, 30, seed=0)
    corpus = []
    for r in train + test:
        corpus += [r["prompt"][0]["content"]] + builtin_task.candidates(r)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|im_end|>")
    tok.chat_template = CHATML
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def run_in_process(script, *args, cwd):
    """A numbered script's main in this process, without the ~3 s of interpreter and library start-up a
    subprocess costs: for runs whose output a test reads (errors are met in a subprocess, as a user would)."""
    mod = load_script(script.removesuffix(".py"))
    here = Path.cwd()
    os.chdir(cwd)
    try:
        mod.main(mod.parse_args([str(a) for a in args]))
    finally:
        os.chdir(here)


def run_stage(script, *args, cwd=None, check=True, env=None):
    """Run a numbered script in a subprocess, as a user would; returns the CompletedProcess."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd or ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc
