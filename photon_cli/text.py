"""Text normalisation shared by the corpus builder and the document cache."""

import unicodedata

_BOM = "\ufeff"


def normalize_text(text: str) -> str:
    """Strip a leading UTF-8 BOM, convert CRLF and lone CR to LF, and apply Unicode NFC.

    The corpus and the document cache both call this, so the same input file
    always yields the same token ids.
    """
    if text.startswith(_BOM):
        text = text[len(_BOM):]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", text)
