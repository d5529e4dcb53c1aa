#!/usr/bin/env python3
"""Does the tokenizer.json that `quantkit export-hf` rebuilt from a GGUF tokenize like llama.cpp on that GGUF?

    python check_hf_tokenizer.py MODEL.gguf EXPORTED_DIR TEXT_FILE...   # needs llama_cpp and tokenizers

Compares token ids of each text file (whole), of a set of code / unicode / whitespace snippets, and of the
special tokens, between `tokenizers.Tokenizer.from_file(EXPORTED_DIR/tokenizer.json)` and
`llama_cpp.Llama(MODEL, vocab_only=True).tokenize(..., add_bos=False)`. Prints one line per text and exits 1
on the first difference (with the first differing position).
"""
import sys

import llama_cpp
import tokenizers

SNIPPETS = [
    "def reverse(s: str) -> str:\n    return s[::-1]\n\n\nprint(reverse('héllo wörld'))\n",
    "fn main() {\n\tlet v: Vec<u8> = vec![0xFF, 0b1010];\n\tprintln!(\"{:?}\", v);  // 日本語のコメント\n}\n",
    "    \n\n\n   trailing spaces   \r\n\tTabs\t\tand CRLF\r\n",
    "Emoji 🤖👩‍💻🏳️‍🌈, CJK 你好，世界, Arabic مرحبا, Hindi नमस्ते, Greek Ωμέγα, math ∑∫√∞ ≠ ≤",
    "numbers 1234567890 3.14159 1e-10 0x1F 12,345,678 and 2024-01-01T00:00:00Z",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "I'm, you're, they'll, we'd, it's — \"quoted\" 'single' `back` ```code```",
    "",
    " ",
    "a" * 300 + " " + "ab" * 200,
]


def main():
    gguf, exported, *files = sys.argv[1:]
    llm = llama_cpp.Llama(model_path=gguf, vocab_only=True, verbose=False)
    hf = tokenizers.Tokenizer.from_file(f"{exported}/tokenizer.json")
    cases = [(f, open(f, encoding="utf-8").read()) for f in files]
    cases += [(f"snippet {i}", s) for i, s in enumerate(SNIPPETS)]
    total = 0
    for name, text in cases:
        # special=True: llama.cpp parses special tokens in the text as the HF tokenizer does.
        a = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        b = hf.encode(text, add_special_tokens=False).ids
        if a != b:
            i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            print(f"MISMATCH {name}: llama.cpp {len(a)} tokens, HF {len(b)}; first difference at {i}: "
                  f"llama.cpp {a[i:i + 8]} HF {b[i:i + 8]} (text around: {hf.decode(b[max(0, i - 4):i + 4])!r})")
            sys.exit(1)
        # and back
        if hf.decode(b, skip_special_tokens=False) != text:
            print(f"MISMATCH {name}: HF decode does not round-trip")
            sys.exit(1)
        total += len(a)
        print(f"ok {name}: {len(a)} tokens identical")
    print(f"tokenizer parity: {len(cases)} texts, {total} tokens, identical")


if __name__ == "__main__":
    main()
