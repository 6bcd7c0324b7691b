"""The tokenizer inside a GGUF: transformers' GGUF loader must rebuild one that encodes like the source."""
import pytest
from gguf import GGUFReader
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from kdistill.base.errors import ModelError
from kdistill.export import export_gguf
from kdistill.export.gguf_vocab import CONTROL, LLAMA3_SPLIT, NORMAL, UNUSED, gguf_vocab, pre_tokenizer_name
from tests.helpers import CORPUS, tiny_tokenizer

from .export_fixtures import SENTENCES, save_student


@pytest.fixture(scope="module")
def exported(student_dir, tmp_path_factory):
    path = export_gguf(student_dir, tmp_path_factory.mktemp("vocab") / "s.gguf", "Q8_0")
    return path, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.parametrize("text", SENTENCES)
def test_gguf_tokenizer_encodes_like_the_source(exported, student_dir, text):
    source = AutoTokenizer.from_pretrained(student_dir)
    assert exported[1](text)["input_ids"] == source(text)["input_ids"]
    assert exported[1].decode(source(text)["input_ids"]) == text


def test_specials_and_chat_template_survive(exported, student_dir):
    source, loaded = AutoTokenizer.from_pretrained(student_dir), exported[1]
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(loaded, name) == getattr(source, name)
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    assert loaded.apply_chat_template(messages, tokenize=False) == source.apply_chat_template(messages, tokenize=False)


def test_metadata_fields(exported):
    fields = GGUFReader(exported[0]).fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    types = fields["tokenizer.ggml.token_type"].contents()
    assert types[:3] == [CONTROL] * 3 and set(types[3:]) == {NORMAL}
    assert fields["tokenizer.ggml.bos_token_id"].contents() == 1
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False


def test_padded_vocabulary(tmp_path):
    """A model with more embedding rows than tokens gets `[PAD{i}]` entries, as convert_hf_to_gguf writes."""
    model_dir = save_student(tmp_path / "padded", vocab_size=384)
    vocab = gguf_vocab(AutoTokenizer.from_pretrained(model_dir), 384, "x")
    assert len(vocab.tokens) == 384 and vocab.tokens[320] == "[PAD320]" and vocab.token_types[383] == UNUSED
    path = export_gguf(model_dir, tmp_path / "p.gguf", "F32")
    loaded = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    assert loaded(SENTENCES[0])["input_ids"] == tiny_tokenizer()(SENTENCES[0])["input_ids"]


def test_tokenizer_larger_than_model_is_refused():
    with pytest.raises(ModelError, match="ids up to 319 but the model has only 256"):
        gguf_vocab(tiny_tokenizer(), 256, "student")


def test_sentencepiece_style_tokenizer_is_refused(tmp_path):
    from tokenizers import SentencePieceBPETokenizer

    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(CORPUS, vocab_size=300, show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=sp)
    with pytest.raises(ModelError, match="byte-level BPE.*Metaspace decoder"):
        gguf_vocab(tok, len(tok), "student")


def pre(node):
    return pre_tokenizer_name({"pre_tokenizer": node}, "tok")


def test_pre_tokenizer_names():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert pre(byte_level) == "gpt-2"
    digits = {"type": "Digits", "individual_digits": True}
    assert pre({"type": "Sequence", "pretokenizers": [digits, byte_level]}) == "smollm"
    split = {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False}
    assert pre({"type": "Sequence", "pretokenizers": [split, dict(byte_level, use_regex=False)]}) == "llama-bpe"


def test_unknown_pre_tokenizers_are_refused():
    with pytest.raises(ModelError, match="prefix space"):
        pre({"type": "ByteLevel", "add_prefix_space": True, "use_regex": True})
    with pytest.raises(ModelError, match="no llama.cpp equivalent"):
        pre({"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, {"type": "ByteLevel"}]})
