"""The prompt format that joins a document and a question; defined here and nowhere else.

    <|document|> DOCUMENT <|pad|> x p <|question|> QUESTION <|answer|> <|pad|> x C_1 ANSWER <|endoftext|>

p >= 0 padding tokens go between the document and the question so that <|answer|> ends a
meta-context (a multiple of U = prod C_l tokens). In PHOTON the first C_1-token chunk of a
meta-context is conditioned on a forecast made before the previous meta-context was read, so it
cannot see the question. That chunk is therefore filled with C_1 known padding tokens (the
answer lead), and every answer token is predicted from forecasts that include the whole
question. Padding is a dedicated special token, never a real one. The document's own tokens do
not depend on the question, so a cached document serves every question.
"""

from __future__ import annotations

from dataclasses import dataclass

from photon_cli.tokenizer import SPECIAL_TOKEN_IDS, SPECIAL_TOKENS

EOS_ID = SPECIAL_TOKEN_IDS[SPECIAL_TOKENS["eos"]]
PAD_ID = SPECIAL_TOKEN_IDS[SPECIAL_TOKENS["pad"]]
DOCUMENT_ID = SPECIAL_TOKEN_IDS[SPECIAL_TOKENS["document"]]
QUESTION_ID = SPECIAL_TOKEN_IDS[SPECIAL_TOKENS["question"]]
ANSWER_ID = SPECIAL_TOKEN_IDS[SPECIAL_TOKENS["answer"]]


def document_tokens(text_ids: list[int]) -> list[int]:
    """Return the document part of the prompt: <|document|> followed by the document's token ids."""
    return [DOCUMENT_ID] + list(text_ids)


def question_tokens(document_length: int, question_ids: list[int], unit: int) -> list[int]:
    """Padding + <|question|> QUESTION <|answer|>, sized so that the prompt ends on a multiple
    of `unit` tokens when it follows `document_length` document-part tokens."""
    body = [QUESTION_ID] + list(question_ids) + [ANSWER_ID]
    padding = (-(document_length + len(body))) % unit
    return [PAD_ID] * padding + body


def answer_lead(chunk: int = 4) -> list[int]:
    """Return the padding chunk that follows <|answer|>; `chunk` is the model's C_1."""
    return [PAD_ID] * chunk


@dataclass(frozen=True)
class QAPrompt:
    document: list[int]  # <|document|> + document ids
    query: list[int]  # padding + <|question|> question <|answer|> + answer lead

    @property
    def tokens(self) -> list[int]:
        return self.document + self.query


def build_prompt(document_ids: list[int], question_ids: list[int], unit: int, lead: int = 4) -> QAPrompt:
    document = document_tokens(document_ids)
    return QAPrompt(document, question_tokens(len(document), question_ids, unit) + answer_lead(lead))


def training_sample(document_ids: list[int], question_ids: list[int], answer_ids: list[int],
                    unit: int, lead: int = 4) -> list[int]:
    """Build one QA training sample in the exact format `ask` uses, with the reference answer and <|endoftext|>."""
    return build_prompt(document_ids, question_ids, unit, lead).tokens + list(answer_ids) + [EOS_ID]


def answer_loss_weights(tokens, answer_weight: float):
    """Per-position loss weights for a (B, T) batch: `answer_weight` on every answer token and
    its <|endoftext|>, 1 elsewhere.

    An answer starts at the first token after <|answer|> and its padding lead that is not
    <|pad|>, and runs to the next <|endoftext|> (included) or the row's end. A QA row holds a
    few dozen answer tokens among thousands of document tokens, so without the weight the
    answer contributes almost nothing to the mean loss.
    """
    import torch

    weights = torch.ones(tokens.shape, dtype=torch.float32, device=tokens.device)
    if answer_weight == 1.0:
        return weights
    rows = tokens.tolist()
    for b, row in enumerate(rows):
        position = 0
        while True:
            try:
                position = row.index(ANSWER_ID, position) + 1
            except ValueError:
                break
            while position < len(row) and row[position] == PAD_ID:
                position += 1
            try:
                end = row.index(EOS_ID, position) + 1
            except ValueError:
                end = len(row)
            weights[b, position:end] = answer_weight
            position = end
    return weights
