"""In-graph BERT tokenization that reproduces the Hugging Face ``BertTokenizer`` (uncased).

The frozen text encoder must tokenize inside the TensorFlow graph so that an exported SavedModel
takes raw strings and runs on the stock TF Serving binary (core TF + TF Text ops only, no
``py_function``). TF Text's tokenizers normalise a little differently from the Hugging Face
reference that produced all-MiniLM-L6-v2's training data, so we normalise first, in the graph,
exactly as Hugging Face's ``BasicTokenizer`` does, and only then hand the text to
:class:`tensorflow_text.FastBertTokenizer` for the whitespace / punctuation / CJK split and the
WordPiece step:

1. invalid UTF-8 bytes become U+FFFD (``unicode_transcode(errors="replace")``) — never a crash;
2. ``\\t``, ``\\n``, ``\\r`` and Unicode space separators (``Zs``) become a plain space;
3. NUL, U+FFFD and the other control / format characters are removed (HF ``_clean_text``), so an
   invalid byte is dropped, as the Python reference drops an undecodable character;
4. Unicode lower-casing with full case mapping (like Python's ``str.lower``, not ICU case folding,
   which would turn ``ß`` into ``ss``);
5. NFD and removal of combining marks (``Mn``): ``Amélie`` → ``amelie`` (HF ``_run_strip_accents``).

The result is truncated to ``max_length`` tokens *including* ``[CLS]`` and ``[SEP]`` and padded
to the longest sequence of the batch (dynamic padding), not to ``max_length``.
"""

from __future__ import annotations

import pathlib

import tfsr  # noqa: F401  (selects Keras 2 before TensorFlow is imported)

import tensorflow as tf
import tensorflow_text as tf_text

CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"

# RE2 patterns of the cleaning steps above.
_WHITESPACE_PATTERN = r"[\t\n\r\p{Zs}]"
_REMOVE_PATTERN = r"\x{0}|\x{FFFD}|\p{C}"


def read_vocab(vocab_path: str | pathlib.Path) -> list[str]:
    """The WordPiece vocabulary of ``vocab.txt``, one token per line (line number = token id)."""
    path = pathlib.Path(vocab_path)
    if not path.is_file():
        raise FileNotFoundError(f"WordPiece vocabulary not found: {path}")
    tokens = path.read_text(encoding="utf-8").splitlines()
    for special in (CLS_TOKEN, SEP_TOKEN, PAD_TOKEN, UNK_TOKEN):
        if special not in tokens:
            raise ValueError(f"vocabulary {path} has no {special} token; is it a BERT vocab.txt?")
    return tokens


def normalize_texts(texts: tf.Tensor) -> tf.Tensor:
    """Hugging Face ``BasicTokenizer`` normalisation (uncased) of a string tensor, in the graph.

    Invalid UTF-8 is replaced then dropped (see the module docstring), so arbitrary bytes are safe.
    """
    texts = tf.strings.unicode_transcode(
        texts,
        input_encoding="UTF-8",
        output_encoding="UTF-8",
        errors="replace",
        replacement_char=0xFFFD,
        replace_control_characters=False,
    )
    texts = tf.strings.regex_replace(texts, _WHITESPACE_PATTERN, " ")
    texts = tf.strings.regex_replace(texts, _REMOVE_PATTERN, "")
    texts = tf.strings.lower(texts, encoding="utf-8")
    texts = tf_text.normalize_utf8(texts, "NFD")
    return tf.strings.regex_replace(texts, r"\p{Mn}", "")


class BertTextTokenizer(tf.Module):
    """Strings → padded WordPiece ids and attention mask, entirely in the TensorFlow graph.

    Reproduces the Hugging Face uncased ``BertTokenizer`` used by sentence-transformers (see the
    module docstring for the normalisation), truncates to ``max_length`` tokens including
    ``[CLS]``/``[SEP]`` and pads to the longest sequence in the batch.

    Example:

    >>> tok = BertTextTokenizer(read_vocab(".../vocab.txt"), max_length=256)
    >>> ids, mask = tok(tf.constant(["Toy Story (1995)"]))   # ids: [1, 8] int32

    Args:
      vocab: the WordPiece vocabulary (token id = list index).
      max_length: maximum sequence length including the two special tokens; at least 2.

    Input shape: ``[batch]`` tf.string. Output: ``(token_ids, mask)``, both ``[batch, seq]`` int32
    with ``seq = min(longest, max_length)``; padding id is ``[PAD]`` (0 in BERT vocabularies).
    """

    def __init__(self, vocab: list[str], max_length: int = 256, name: str | None = None):
        super().__init__(name=name)
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2 (room for [CLS] and [SEP]), got {max_length!r}")
        self.max_length = max_length
        self.vocab_size = len(vocab)
        self.cls_id = vocab.index(CLS_TOKEN)
        self.sep_id = vocab.index(SEP_TOKEN)
        self.pad_id = vocab.index(PAD_TOKEN)
        self._wordpiece = tf_text.FastBertTokenizer(
            vocab=vocab,
            token_out_type=tf.int32,
            unknown_token=UNK_TOKEN,
            lower_case_nfd_strip_accents=False,  # normalize_texts already did it, the HF way
        )

    def tokenize(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """``[batch]`` strings → ragged ``[batch, (tokens)]`` int32 ids with [CLS]/[SEP], truncated."""
        texts = tf.convert_to_tensor(texts, dtype=tf.string)
        pieces = self._wordpiece.tokenize(normalize_texts(texts))
        pieces = pieces[:, : self.max_length - 2]
        batch = tf.shape(texts, out_type=tf.int64)[0]
        cls = tf.RaggedTensor.from_tensor(tf.fill([batch, 1], tf.constant(self.cls_id, tf.int32)))
        sep = tf.RaggedTensor.from_tensor(tf.fill([batch, 1], tf.constant(self.sep_id, tf.int32)))
        return tf.concat([cls, pieces, sep], axis=1)

    def __call__(self, texts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``[batch]`` strings → ``(token_ids, mask)`` padded to the longest sequence of the batch."""
        return self.pad(self.tokenize(texts))

    def pad(self, tokens: tf.RaggedTensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Ragged ids → dense ``(token_ids, mask)`` padded to the longest row (dynamic padding)."""
        ids = tokens.to_tensor(default_value=self.pad_id)
        lengths = tf.cast(tokens.row_lengths(), tf.int32)
        mask = tf.sequence_mask(lengths, maxlen=tf.shape(ids)[1], dtype=tf.int32)
        return ids, mask
