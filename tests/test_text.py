"""Text: tokenizers, MLM masking, corpus packing, the text encoders, and pretraining through ``sofa pretrain``."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

import sofa
from sofa.cli import main
from sofa.data.text import (
    SPECIAL_TOKENS,
    ByteTokenizer,
    load_tokenizer,
    mask_tokens,
    pack_corpus,
    read_corpus,
)
from sofa.errors import UserError
from sofa.models import get_entry
from sofa.models.flops import count_params, create_on_meta
from sofa.models.text import TEXT_MIXERS, TextModelOutput, load_pretrained_encoder

QUIET = ["--workers", "0", "--threads", "1", "--progress", "none", "--device", "cpu"]
MIXERS = sorted(TEXT_MIXERS)
SAMPLE = "Héllo, wörld!  The “assert” statement\n\tends here. 日本語"


def python_docs_sample(paragraphs: int = 300) -> str:
    """A small real-English sample: the first paragraphs of the python-docs corpus."""
    from sofa.data.text import corpus_paragraphs

    out = []
    for p in corpus_paragraphs("python-docs"):
        out.append(p)
        if len(out) == paragraphs:
            break
    return "\n\n".join(out)


# ------------------------------------------------------------------------------------------------ tokenizers
def test_byte_tokenizer_round_trip_and_ids():
    tok = load_tokenizer("bytes")
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.unk_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == len(SPECIAL_TOKENS) + 256
    ids = tok.encode(SAMPLE)
    assert ids == [5 + b for b in SAMPLE.encode("utf-8")]
    assert tok.decode(ids) == SAMPLE
    assert tok.decode([tok.cls_id, *ids, tok.sep_id, tok.pad_id]) == SAMPLE  # specials left out


def test_byte_tokenizer_saves_a_tokenizer_json_both_readers_agree_on(tmp_path):
    path = ByteTokenizer().save(tmp_path / "tokenizer.json")
    again = load_tokenizer(path)  # recognised without the tokenizers package
    assert isinstance(again, ByteTokenizer) and again.encode(SAMPLE) == ByteTokenizer().encode(SAMPLE)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)  # a directory holding one (a run)
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers not installed (pip install 'sofa[text]')")
    hf = tokenizers.Tokenizer.from_file(str(path))
    assert hf.encode(SAMPLE, add_special_tokens=False).ids == ByteTokenizer().encode(SAMPLE)
    assert hf.decode(ByteTokenizer().encode(SAMPLE)) == SAMPLE
    pair = hf.encode("ab", "c")
    ids, types = ByteTokenizer().encode_pair("ab", "c")
    assert pair.ids == ids and pair.type_ids == types


def test_encode_pair_frames_and_truncates_the_longer_side_first():
    tok = ByteTokenizer()
    ids, types = tok.encode_pair("abcdefgh", "xy", max_len=9)  # room for 6 of 10 tokens
    a, b = tok.encode("abcd"), tok.encode("xy")
    assert ids == [tok.cls_id, *a, tok.sep_id, *b, tok.sep_id]
    assert types == [0] * 6 + [1] * 3
    ids, types = tok.encode_pair("abc", "uvwxyz", max_len=8)  # 9 → 5 tokens: b loses 3, then a and b alternate
    assert ids == [tok.cls_id, *tok.encode("ab"), tok.sep_id, *tok.encode("uvw"), tok.sep_id]
    ids, types = tok.encode_pair("abcdef", max_len=5)
    assert ids == [tok.cls_id, *tok.encode("abc"), tok.sep_id] and types == [0] * 5


def test_without_tokenizers_the_byte_file_still_loads_and_others_say_what_to_install(tmp_path, monkeypatch):
    import sys

    ByteTokenizer().save(tmp_path / "bytes.json")
    (tmp_path / "other.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {"a": 0}}}))
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers now fails
    assert isinstance(load_tokenizer(tmp_path / "bytes.json"), ByteTokenizer)
    with pytest.raises(UserError, match=r"pip install 'sofa\[text\]'"):
        load_tokenizer(tmp_path / "other.json")


def test_unknown_tokenizer_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_tokenizer(tmp_path / "missing.json")


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    """A WordPiece tokenizer trained by ``sofa tokenizer train`` on a real-text sample, and the sample."""
    pytest.importorskip("tokenizers", reason="tokenizers not installed (pip install 'sofa[text]')")
    root = tmp_path_factory.mktemp("wordpiece")
    text = python_docs_sample()
    (root / "sample.txt").write_text(text, encoding="utf-8")
    out = root / "tok.json"
    assert main(["tokenizer", "train", str(root / "sample.txt"), "--vocab", "600", "--out", str(out)]) == 0
    return out, text


def test_trained_wordpiece_round_trip(wordpiece):
    path, text = wordpiece
    tok = load_tokenizer(path)
    assert tok.vocab_size == 600
    assert [tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.unk_id] == [0, 1, 2, 3, 4]
    for para in text.split("\n\n")[:50]:
        ids = tok.encode(para)
        assert tok.unk_id not in ids and min(ids) >= len(SPECIAL_TOKENS)
        decoded = tok.decode(ids)
        # BERT's normalisation: lower case, whitespace dropped between pieces; the characters are kept
        assert "".join(decoded.split()) == "".join(para.lower().split())
        assert tok.encode(decoded) == ids
    ids, types = tok.encode_pair("The assert statement", "is a statement", max_len=16)
    assert ids[0] == tok.cls_id and ids.count(tok.sep_id) == 2 and types[-1] == 1
    assert tok.tok.encode("the assert", "x").ids[0] == tok.cls_id  # the saved post-processor frames as BERT


def test_trained_bpe_round_trip(tmp_path, capsys):
    pytest.importorskip("tokenizers", reason="tokenizers not installed (pip install 'sofa[text]')")
    text = python_docs_sample(100)
    (tmp_path / "sample.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "bpe.json"
    argv = ["tokenizer", "train", str(tmp_path / "sample.txt"), "--vocab", "400", "--kind", "bpe", "--out", str(out)]
    assert main(argv) == 0
    assert "bpe, 400 ids" in capsys.readouterr().out
    tok = load_tokenizer(out)
    for para in text.split("\n\n")[:30]:
        ids = tok.encode(para)
        assert tok.unk_id not in ids
        assert "".join(tok.decode(ids).split()) == "".join(para.lower().split())


# ------------------------------------------------------------------------------------------------ masking
def test_mask_tokens_statistics_match_bert():
    V, n = 1000, 400_000
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(10, V, (n,), generator=gen)
    special = torch.rand(n, generator=gen) < 0.1
    ids[special] = 0
    inputs, labels = mask_tokens(ids, special, mask_id=3, vocab_size=V, generator=gen, prob=0.15)
    chosen = labels != -100
    assert not chosen[special].any() and torch.equal(inputs[special], ids[special])  # specials never touched
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])

    def near(count, trials, p):
        std = math.sqrt(trials * p * (1 - p))
        assert abs(count - trials * p) < 5 * std, (count, trials * p, std)

    m = int(chosen.sum())
    near(m, int((~special).sum()), 0.15)
    masked = int((inputs[chosen] == 3).sum())
    unchanged = int((inputs[chosen] == ids[chosen]).sum())
    near(masked, m, 0.8 + 0.1 / V)  # a random draw may hit [MASK] too
    near(unchanged, m, 0.1 + 0.1 / V)  # ... or the original token
    near(m - masked - unchanged, m, 0.1 * (1 - 2 / V))


def test_mask_tokens_is_reproducible_with_a_generator():
    ids = torch.randint(5, 300, (4, 64))
    special = torch.zeros_like(ids, dtype=torch.bool)
    a = mask_tokens(ids, special, 3, 300, torch.Generator().manual_seed(7))
    b = mask_tokens(ids, special, 3, 300, torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------------ corpora
def test_pack_corpus_frames_sequences_and_splits_deterministically():
    tok = ByteTokenizer()
    train, val = pack_corpus("python-docs", tok, seq_len=64, val_fraction=0.05)
    train2, val2 = pack_corpus("python-docs", tok, seq_len=64, val_fraction=0.05)
    assert torch.equal(train.ids, train2.ids) and torch.equal(val.ids, val2.ids)
    for part in (train, val):
        assert part.ids.shape[1] == 64 and (part.ids[:, 0] == tok.cls_id).all()
        ends = part.ids.gather(1, (part.lengths - 1)[:, None]).squeeze(1)
        assert (ends == tok.sep_id).all() and (part.ids[~part.attention_mask] == tok.pad_id).all()
    paragraphs = read_corpus("python-docs").split("\n\n")
    k = 20
    expected_val = b"".join(p.encode() for i, p in enumerate(paragraphs) if i % k == k - 1)
    body = val.ids[:, 1:][val.attention_mask[:, 1:] & (val.ids[:, 1:] != tok.sep_id)]
    assert bytes((body - 5).tolist()) == expected_val
    assert len(val) > 0 and len(train) > 15 * len(val)


@pytest.mark.parametrize("n", [0, 1, 5, 6, 7, 13, 60])
def test_packing_matches_a_plain_reference(n):
    from array import array

    from sofa.data.text import _pack

    tok = ByteTokenizer()
    stream = torch.randint(5, 261, (n,)).tolist()
    packed = _pack(array("q", stream), 8, tok)
    rows = [[tok.cls_id, *stream[i : i + 6], tok.sep_id] for i in range(0, n, 6)]
    assert packed.lengths.tolist() == [len(r) for r in rows]
    assert packed.ids.tolist() == [r + [tok.pad_id] * (8 - len(r)) for r in rows]


def test_corpus_files_with_bad_bytes_are_read(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"first paragraph \xff here\n\nsecond one\n")
    assert read_corpus([str(f)]) == "first paragraph \ufffd here\n\nsecond one"
    with pytest.raises(UserError, match="no such file"):
        read_corpus([str(tmp_path / "none.txt")])


# ------------------------------------------------------------------------------------------------ models
def _padded_batch(vocab: int, lengths=(20, 13, 7)):
    n = max(lengths)
    seqs = [torch.randint(5, vocab, (1, L)) for L in lengths]
    types = [torch.cat([torch.zeros(1, L // 2), torch.ones(1, L - L // 2)], 1).long() for L in lengths]
    ids = torch.zeros(len(lengths), n, dtype=torch.long)
    tt = torch.zeros_like(ids)
    for i, (s, t) in enumerate(zip(seqs, types, strict=True)):
        ids[i, : s.shape[1]], tt[i, : t.shape[1]] = s[0], t[0]
    return seqs, types, ids, tt, ids != 0


@pytest.mark.parametrize("mixer", MIXERS)
def test_padded_batch_equals_unpadded_sequences(mixer):
    V = 300
    seqs, types, ids, tt, mask = _padded_batch(V)
    for head in ("mlm", "classification"):
        torch.manual_seed(0)
        model = sofa.create_model(f"text_tiny_{mixer}", vocab_size=V, max_len=32, head=head, num_labels=3).eval()
        with torch.no_grad():
            batch = model(ids, attention_mask=mask, token_type_ids=tt).logits
            for i, (s, t) in enumerate(zip(seqs, types, strict=True)):
                alone = model(s, token_type_ids=t).logits[0]
                real = batch[i, : s.shape[1]] if head == "mlm" else batch[i]
                torch.testing.assert_close(real, alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("mixer", MIXERS)
def test_bf16_autocast_gives_a_finite_fp32_loss_and_gradients(mixer):
    model = sofa.create_model(f"text_tiny_{mixer}", vocab_size=300, max_len=64)
    ids = torch.randint(5, 300, (2, 64))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 40:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_mlm_loss_ignores_unlabelled_positions_and_heads():
    V = 50
    model = sofa.create_model("text_tiny_softmax", vocab_size=V, max_len=16).eval()
    ids = torch.randint(5, V, (2, 16))
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 7], labels[1, 9] = 11, 12, 13
    out = model(ids, labels=labels)
    assert isinstance(out, TextModelOutput) and out.logits.shape == (2, 16, V)
    logp = out.logits.float().log_softmax(-1)
    manual = -(logp[0, 3, 11] + logp[1, 7, 12] + logp[1, 9, 13]) / 3
    torch.testing.assert_close(out.loss, manual)
    assert model(ids).loss is None
    reg = sofa.create_model("text_tiny_pool", vocab_size=V, max_len=16, head="regression").eval()
    y = torch.tensor([0.5, -1.0])
    out = reg(ids, labels=y)
    assert out.logits.shape == (2, 1)
    torch.testing.assert_close(out.loss, ((out.logits[:, 0] - y) ** 2).mean())
    cls = sofa.create_model("text_tiny_pool", vocab_size=V, head="classification", num_classes=4)
    assert cls(ids).logits.shape == (2, 4)


def test_mlm_decoder_is_tied_to_the_token_embeddings(tmp_path):
    from sofa.checkpoint import read_checkpoint, save_weights

    model = sofa.create_model("text_tiny_set", vocab_size=100, max_len=16)
    emb = model.encoder.embeddings.word_embeddings.weight
    assert model.head.decoder.weight is emb
    assert sum(p.numel() for p in model.parameters()) == count_params(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(5, 100, (2, 16))
    model(ids, labels=ids).loss.backward()
    opt.step()
    assert model.head.decoder.weight is emb and torch.equal(model.head.decoder.weight, emb)
    save_weights(tmp_path / "w.safetensors", model.state_dict())
    again = sofa.create_model("text_tiny_set", vocab_size=100, max_len=16)
    again.load_state_dict(read_checkpoint(tmp_path / "w.safetensors")[0])
    assert again.head.decoder.weight is again.encoder.embeddings.word_embeddings.weight
    torch.testing.assert_close(again.head.decoder.weight, emb)


@pytest.mark.parametrize("mixer", MIXERS)
def test_text_mini_parameters_are_bert_minis(mixer):
    """BERT-mini has 11.3M parameters (vocabulary 30,522, 512 positions, pooler); ours has 128 positions and
    no pooler in the MLM model, and the softmax-free mixers drop the query/key projections or more."""
    params = count_params(create_on_meta(f"text_mini_{mixer}")) / 1e6
    if mixer == "softmax":
        assert abs(params - 11.3) / 11.3 < 0.03
    else:
        assert 9.5 < params < 11.3
    assert get_entry(f"text_mini_{mixer}").family == "text"


# ------------------------------------------------------------------------------------------------ pretraining
def corpus_unigram_entropy(text: str) -> float:
    """Entropy (nats) of the byte frequencies of ``text``: the loss of a byte model that ignores context."""
    counts = Counter(text.encode("utf-8"))
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("pretrain") / "run"
    argv = ["pretrain", "--corpus", "python-docs", "--tokenizer", "bytes", "--model", "text_tiny_pool"]
    argv += ["--steps", "160", "--eval-interval", "80", "--seq-len", "32", "-b", "32", "--lr", "5e-3"]
    argv += ["--warmup-steps", "10", "--output", str(run), *QUIET]
    assert main(argv) == 0
    return run


def test_pretraining_beats_the_unigram_entropy_of_its_corpus(pretrained_run):
    entropy = corpus_unigram_entropy(read_corpus("python-docs"))
    rows = [json.loads(line) for line in (pretrained_run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if r.get("type") == "epoch" and "val_loss" in r]
    assert len(val) == 2 and val[-1] < val[0] and val[-1] < entropy - 0.03, (val, entropy)
    assert isinstance(load_tokenizer(pretrained_run / "tokenizer.json"), ByteTokenizer)
    assert (pretrained_run / "best.safetensors").is_file()
    header = (pretrained_run / "log.txt").read_text().splitlines()
    assert any("2560 sequences drawn per epoch" in line and "32 ids each" in line for line in header), header[:3]
    assert not any("px" in line for line in header[:3])


def test_mlm_validation_reports_the_standard_error_of_its_loss(pretrained_run):
    from sofa.train.pretrain import MLMTask

    losses = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    sums = {"loss_sum": losses.sum(), "loss_sq_sum": losses.square().sum(), "correct": 1, "count": torch.tensor(4.0)}
    got = MLMTask.finalize_eval(None, sums)
    assert got["loss"] == pytest.approx(3.0) and got["loss_se"] == pytest.approx(float(losses.std() / 2.0))
    rows = [json.loads(line) for line in (pretrained_run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r.get("type") == "epoch"][-1]
    assert 0.0 < last["val_loss_se"] < 0.2 * last["val_loss"]


def test_load_pretrained_encoder_into_a_classifier(pretrained_run):
    from sofa.checkpoint import read_checkpoint

    clf = sofa.create_model("text_tiny_pool", vocab_size=261, max_len=16, head="classification", num_labels=2)
    meta = load_pretrained_encoder(clf, pretrained_run)
    state, _ = read_checkpoint(pretrained_run / "best.safetensors")
    torch.testing.assert_close(clf.encoder.blocks[1].mlp[0].weight, state["encoder.blocks.1.mlp.0.weight"])
    pos = clf.encoder.embeddings.position_embeddings.weight
    torch.testing.assert_close(pos, state["encoder.embeddings.position_embeddings.weight"][:16])
    assert meta.get("tokenizer") == "tokenizer.json"
    wider = sofa.create_model("text_mini_pool", vocab_size=261, max_len=32, head="classification")
    with pytest.raises(UserError, match="shapes differ"):
        load_pretrained_encoder(wider, pretrained_run)


def test_glue_fine_tunes_the_pretrained_encoder_with_its_tokenizer(pretrained_run, tmp_path, capsys):
    """The real pieces together: ``--task glue --init RUN`` takes the run's model, positions and tokenizer."""
    from sofa.checkpoint import read_checkpoint
    from test_glue import write_glue

    write_glue(tmp_path / "glue", ("sst2",))
    run = tmp_path / "ft"
    argv = ["train", "--task", "glue", "--glue-task", "sst2", "--data", tmp_path / "glue", "--init", pretrained_run]
    argv += ["--epochs", "1", "-b", "4", "--lr", "1e-12", "--warmup-epochs", "0", "--output", run, *QUIET]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert "encoder weights from" in (run / "log.txt").read_text()
    state, _ = read_checkpoint(run / "model.safetensors")
    pre, _ = read_checkpoint(pretrained_run / "best.safetensors")
    assert state["encoder.embeddings.position_embeddings.weight"].shape[0] == 32  # the run's --seq-len
    torch.testing.assert_close(state["encoder.blocks.0.mlp.0.weight"], pre["encoder.blocks.0.mlp.0.weight"])


def test_pretraining_with_a_trained_tokenizer_keeps_it_in_the_run(wordpiece, tmp_path):
    path, _ = wordpiece
    run = tmp_path / "run"
    argv = ["pretrain", "--corpus", "python-docs", "--tokenizer", str(path), "--model", "text_tiny_set"]
    argv += ["--steps", "2", "--eval-interval", "2", "--seq-len", "32", "-b", "2", "--output", str(run), *QUIET]
    assert main(argv) == 0
    assert (run / "tokenizer.json").read_bytes() == path.read_bytes()
    from sofa.checkpoint import read_checkpoint

    state, meta = read_checkpoint(run / "model.safetensors")
    assert state["encoder.embeddings.word_embeddings.weight"].shape[0] == 600


@pytest.mark.slow
def test_pretraining_under_ddp_keeps_the_ranks_in_step(tmp_path):
    """Two CPU processes (torchrun, gloo): each draws its own shard, the weights stay equal on both ranks."""
    from safetensors.torch import load_file

    from helpers import torchrun_two_cpu_processes

    out, dump = tmp_path / "ddp", tmp_path / "ranks"
    train = ["pretrain", "--model", "text_tiny_set", "--steps", "4", "--eval-interval", "2", "--seq-len", "32"]
    train += ["-b", "2", "--output", out, "--workers", "0", "--threads", "1", "--progress", "log"]
    torchrun_two_cpu_processes(["--save-rank-weights", dump, "--", *train], tmp_path)
    a, b = load_file(dump / "rank0.safetensors"), load_file(dump / "rank1.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows if r.get("type") == "epoch"] == [2, 4]
    assert (out / "tokenizer.json").is_file()


def test_pretrain_refuses_an_image_model(capsys, tmp_path):
    assert main(["pretrain", "--model", "soft_mini", "--steps", "1", "--output", str(tmp_path / "r"), *QUIET]) != 0
    assert "text encoder" in capsys.readouterr().err


def test_bench_text_measures_a_training_step_and_skips_what_would_not_fit(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "text", "--seq", "16,32", "--size", "tiny", "--mixers", "pool,softmax", "--no-isolate"]
    argv += ["--repeats", "1", "--budget", "0.1", "--threads", "1", "--mem-limit", "1e-6", "--json", str(out)]
    assert main(argv) == 0
    records = json.loads(out.read_text())["records"]
    pool = [r for r in records if r["mixer"] == "pool"]
    assert [r["seq"] for r in pool] == [16, 32] and all(r["median_s"] > 0 and r["runs"] >= 1 for r in pool)
    assert all(r["model"] == "text_tiny_pool" and "peak_mem_bytes" in r for r in pool)
    softmax = [r for r in records if r["mixer"] == "softmax"]
    assert len(softmax) == 2 and all("over --mem-limit" in r["skipped"] for r in softmax)
    assert "| pool |" in capsys.readouterr().out
