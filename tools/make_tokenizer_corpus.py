#!/usr/bin/env python3
"""Generate the tokenizer test corpus (deterministic: fixed seed).

Writes
  tests/data/tokenizer_corpus.txt             one sample per line ('\n' separated, UTF-8, no '\r' or NUL)
  tests/data/tokenizer_corpus_multiline.jsonl one JSON string per line; samples that contain
                                              newlines, '\r', NUL, and other line-breaking characters

Sources: the King James Bible (public domain) as printed by the Debian `bible` program
(package bible-kjv), lines of the Python standard library (PSF licence), and text generated here:
contractions, numbers, punctuation runs, many scripts, emoji, and odd whitespace.

usage: python3 tools/make_tokenizer_corpus.py [repo_root]
Then run tools/make_tokenizer_golden.js to produce the golden token ids.
"""
import json
import os
import random
import subprocess
import sys

SEED = 20240521
rng = random.Random(SEED)


def kjv_lines():
    text = subprocess.run(["bible", "Gen1:1-Rev22:21"], check=True, capture_output=True,
                          text=True, encoding="utf-8").stdout
    lines = text.split("\n")
    out = []
    # contiguous chunks from random places: raw printed lines (verse numbers, indentation, headings)
    for _ in range(60):
        start = rng.randrange(0, len(lines) - 20)
        out.extend(lines[start:start + 20])
    return [l for l in out if "\r" not in l]


def kjv_verses():
    """Whole verses re-joined into one line each (long lines of prose)."""
    text = subprocess.run(["bible", "Psa119:1-Psa119:176", "Mat5:1-Mat7:29"], check=True,
                          capture_output=True, text=True, encoding="utf-8").stdout
    verses, cur = [], []
    for line in text.split("\n"):
        s = line.strip()
        if not s:
            continue
        head = s.split(" ", 1)[0]
        if head.isdigit() and line.startswith(" "):
            if cur:
                verses.append(" ".join(cur))
            cur = [s.split(" ", 1)[1] if " " in s else ""]
        else:
            cur.append(s)
    if cur:
        verses.append(" ".join(cur))
    return verses[:300]


def python_lines():
    base = f"/usr/lib/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.path.isdir(base):
        base = "/usr/lib/python3.11"
    files = ["json/decoder.py", "textwrap.py", "heapq.py", "bisect.py", "fractions.py",
             "string.py", "shlex.py", "base64.py", "colorsys.py", "difflib.py"]
    out = []
    for f in files:
        p = os.path.join(base, f)
        if not os.path.exists(p):
            continue
        with open(p, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        start = rng.randrange(0, max(1, len(lines) - 40))
        out.extend(l for l in lines[start:start + 40] if "\r" not in l)
    return out


CPP_SNIPPETS = r"""
#include <vector>
template <typename T, int N> struct Array { T data[N]; };
int main(int argc, char** argv) { return argc > 1 ? std::atoi(argv[1]) : 0; }
for (size_t i = 0; i < n; ++i) { y[i] += a * x[i]; }
auto lambda = [&](const auto& v) -> decltype(v.size()) { return v.size(); };
std::unordered_map<std::string, std::vector<int32_t>> cache{};
if (ptr != nullptr && *ptr == '\0') { throw std::runtime_error("empty"); }
x <<= 3; y >>= 2; z ^= ~w; a &&= b; c ||= d; e ??= f;
const char* s = "He said \"hi\"\n\t and left";
#define MAX(a, b) ((a) > (b) ? (a) : (b))
/* block comment */ // line comment
    return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
def f(x, *args, **kwargs): return {k: v for k, v in kwargs.items() if v is not None}
SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;
{"key": [1, 2.5, -3e10, true, null], "nested": {"a": "b"}, "s": "x,y"}
["a","b","c"],["d","e"],{"k":"v","w":"z"}
<div class="main" id='x'><p>Hello &amp; welcome!</p></div>
$ ./configure --prefix=/usr/local && make -j$(nproc) && sudo make install
https://example.com/path/to/page?query=1&lang=en#section-2
user@example.org, root@localhost:~# ls -la /var/log/*.log | grep -v '^d'
0x7fff5fbff8a0 0b1010_1010 0o755 1_000_000 3.14159e-10 6.022E+23 -0.0 +inf NaN
""".strip("\n").split("\n")

CONTRACTION_WORDS = ["it", "don", "he", "she", "we", "they", "you", "I", "can", "won", "that",
                     "John", "the dog", "ROCK", "x", "1990", "", " ", "o", "rock 'n", "y'all"]
SUFFIXES = ["s", "t", "re", "ve", "m", "ll", "d", "S", "T", "RE", "VE", "M", "LL", "D", "Re", "rE",
            "Ll", "lL", "sT", "ss", "tt", "", "'", "''", "ve'", "d've", "t'd", "s's"]
QUOTES = ["'", "\u2019", "\u2018", "`", "\u02bc", "''"]

SCRIPTS = {
    "cjk": "\u4eba\u751f\u5982\u68a6\uff0c\u4e00\u6a3d\u8fd8\u9179\u6c5f\u6708\u3002\u6771\u4eac\u90fd\u6e0b\u8c37\u533a\u3001\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002\u3072\u3089\u304c\u306a\u30ab\u30bf\u30ab\u30ca\ud55c\uad6d\uc5b4 \ud14c\uc2a4\ud2b8",
    "cyrillic": "\u0421\u044a\u0435\u0448\u044c \u0436\u0435 \u0435\u0449\u0451 \u044d\u0442\u0438\u0445 \u043c\u044f\u0433\u043a\u0438\u0445 \u0444\u0440\u0430\u043d\u0446\u0443\u0437\u0441\u043a\u0438\u0445 \u0431\u0443\u043b\u043e\u043a, \u0434\u0430 \u0432\u044b\u043f\u0435\u0439 \u0447\u0430\u044e. \u0404\u0406\u0407\u0490",
    "greek": "\u039e\u03b5\u03c3\u03ba\u03b5\u03c0\u03ac\u03b6\u03c9 \u03c4\u1f74\u03bd \u03c8\u03c5\u03c7\u03bf\u03c6\u03b8\u03cc\u03c1\u03b1 \u03b2\u03b4\u03b5\u03bb\u03c5\u03b3\u03bc\u03af\u03b1. \u0391\u0392\u0393 \u03c9\u0301 \u1f00\u1f01",
    "arabic": "\u0627\u0644\u0633\u0644\u0627\u0645 \u0639\u0644\u064a\u0643\u0645 \u0648\u0631\u062d\u0645\u0629 \u0627\u0644\u0644\u0647\u060c \u0661\u0662\u0663\u0664 \u06f1\u06f2\u06f3 \u0628\u0650\u0633\u0652\u0645\u0650 \u200f\u200e",
    "hebrew": "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd \u05d1\u05bc\u05b0\u05e8\u05b5\u05d0\u05e9\u05c1\u05b4\u05d9\u05ea",
    "devanagari": "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e \u0939\u093f\u0928\u094d\u0926\u0940 \u0967\u0968\u0969 \u0915\u094d\u0937\u0924\u094d\u0930\u093f\u092f",
    "thai": "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a \u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22 \u0e51\u0e52\u0e53",
    "tamil": "\u0bb5\u0ba3\u0b95\u0bcd\u0b95\u0bae\u0bcd \u0ba4\u0bae\u0bbf\u0bb4\u0bcd \u0be7\u0be8",
    "latin_ext": "Stra\u00dfe \u00e9t\u00e9 na\u00efve fa\u00e7ade \u0141\u00f3d\u017a \u0159\u00ed\u0161 \u0131stanbul \u0130 \ufb01ne \u00c5ngstr\u00f6m \u1e9e \u0149",
    "combining": "e\u0301 a\u0308 n\u0303 o\u0302\u0323 Z\u0351\u0357\u0350\u0308\u033e\u0342 c\u0327 \u0301x \u20dd\u20e3 1\u20e3",
    "math": "\u2200x\u2208\u211d: x\u00b2 \u2265 0 \u2211\u2081\u207f i = n(n+1)/2 \u221e \u2248 \u03c0 \u2153 \u00bd \u2167 \u2460\u2461 \U0001d400\U0001d401 \U0001d7ce",
    "misc": "\u00a9\u00ae\u2122 \u20ac100 \u00a3 \u00a5 \u20b9 \u2014\u2013\u2026 \u00ab\u00bb \u201e\u201c \u2022 \u00b7 \u00a7\u00b6 \u2020 \u3001\u3002 \uff01\uff1f \u30fc",
    "emoji": "\U0001f600\U0001f602 \U0001f44d\U0001f3fd \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 \U0001f3f3\ufe0f\u200d\U0001f308 \U0001f1fa\U0001f1f8\U0001f1ef\U0001f1f5 \u2764\ufe0f \U0001f9d1\u200d\U0001f4bb #\ufe0f\u20e3 \U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "rare": "\U00010380\U00010381 \U0001f130 \U00020000\U0002a6d6 \U000f0000 \ue000 \ufffd \u0001\u0002\u001b[0m \u007f \u0085 \u180e \u200b\u200c\u200d \u2060",
}

SPACES = [" ", "  ", "   ", "\t", "\t\t", " \t", "\t ", "\u00a0", "\u3000", "\u2028", "\u2029",
          "\u2003", "\u202f", "\u205f", "\ufeff", "\u000b", "\u000c", "\u1680", " \u00a0", "\u00a0 "]


def pick(seq):
    return seq[rng.randrange(len(seq))]


def contraction_lines():
    out = []
    for w in CONTRACTION_WORDS:
        for q in QUOTES:
            out.append(" ".join(f"{w}{q}{s}" for s in SUFFIXES))
    samples = ["DON'T", "don't", "Don't", "it's", "it\u2019s", "IT'S", "I'm", "I'M", "we've",
               "WE'VE", "they're", "THEY'RE", "she'll", "SHE'LL", "he'd", "HE'D", "'s", " 's",
               "  's", "''s", "'''", "'", " '", "'re'", "rock'n'roll", "'tis", "'Twas", "o'clock",
               "James's", "James'", "the '90s", "'s'", "'ss", "'sss", "'ll've", "'d'd'd",
               "x's y't z're w've v'm u'll t'd", "?'s", "!'t", " 'll", "\t'd", "'\u00e9", "'\u0431"]
    out.extend(samples)
    for _ in range(120):
        parts = []
        for _ in range(rng.randrange(1, 8)):
            parts.append(pick(CONTRACTION_WORDS) + pick(QUOTES) + pick(SUFFIXES))
        out.append(pick([" ", "", "  ", "\t"]).join(parts))
    return out


def number_lines():
    out = []
    for _ in range(200):
        kind = rng.randrange(8)
        if kind == 0:
            out.append(str(rng.randrange(10 ** rng.randrange(1, 30))))
        elif kind == 1:
            out.append(f"{rng.uniform(-1e6, 1e6):.{rng.randrange(0, 12)}f}")
        elif kind == 2:
            out.append(" ".join(str(rng.randrange(-1000, 1000)) for _ in range(rng.randrange(1, 15))))
        elif kind == 3:
            out.append(f"{rng.randrange(1, 13)}/{rng.randrange(1, 29)}/{rng.randrange(1900, 2100)} "
                       f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}")
        elif kind == 4:
            out.append(f"${rng.randrange(10**7):,}.{rng.randrange(100):02d} ({rng.randrange(100)}%)")
        elif kind == 5:
            out.append(f"{rng.random():e} {rng.randrange(2**32):#x} {rng.randrange(2**16):#b}")
        elif kind == 6:
            out.append("".join(pick("0123456789\u0660\u0661\u0967\u0e51\u2460\u2167\u00bd\uff11\uff12 ")
                               for _ in range(rng.randrange(1, 25))))
        else:
            out.append(f"v{rng.randrange(10)}.{rng.randrange(100)}.{rng.randrange(1000)}-rc{rng.randrange(9)}"
                       f" 192.168.{rng.randrange(256)}.{rng.randrange(256)}:{rng.randrange(65536)}")
    return out


PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\u2014\u2026\u00bf\u00a1\u00ab\u00bb\u201c\u201d"


def punct_lines():
    out = []
    for _ in range(200):
        n = rng.randrange(1, 40)
        s = "".join(pick(PUNCT + " aZ1") if rng.random() < 0.3 else pick(PUNCT) for _ in range(n))
        out.append(s)
    out.extend(["...", "!!!", "?!?!", "----------", "==========", "**bold**", "__init__", "#!/bin/sh",
                "<|endoftext|>", "text<|endoftext|>more", " <|endoftext|> ", "<|endoftext|><|endoftext|>",
                "<|endoftext", "|endoftext|>", "<|ENDOFTEXT|>"])
    return out


def script_lines():
    out = []
    for name, text in SCRIPTS.items():
        out.append(text)
        words = text.split(" ")
        for _ in range(25):
            out.append(pick(SPACES).join(pick(words) for _ in range(rng.randrange(1, 9))))
    return out


def whitespace_lines():
    out = []
    words = ["a", "word", "Hello", "42", "!", "'s", "\u00e9t\u00e9", "\u4e2d\u6587", "\U0001f600", "x1", ""]
    for _ in range(300):
        parts = []
        for _ in range(rng.randrange(1, 10)):
            parts.append(pick(words))
            parts.append("".join(pick(SPACES) for _ in range(rng.randrange(1, 4))))
        if rng.random() < 0.5:
            parts.pop()  # sometimes no trailing whitespace
        out.append("".join(parts))
    out.extend([" ", "  ", "\t", " \t ", "\u00a0", "\u3000", "trailing   ", "   leading", "\u2028", ""])
    return out


# Code point pools for random Unicode strings: mostly assigned, some unassigned / private use.
POOLS = [(0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x590, 0x6ff), (0x900, 0x97f),
         (0xe00, 0xe7f), (0x1100, 0x11ff), (0x1e00, 0x1fff), (0x2000, 0x206f), (0x2070, 0x218f),
         (0x2190, 0x2bff), (0x3000, 0x30ff), (0x4e00, 0x4fff), (0xac00, 0xad00), (0xfb00, 0xfeff),
         (0xff00, 0xffef), (0x10000, 0x1007f), (0x1d400, 0x1d7ff), (0x1f300, 0x1faff), (0x20000, 0x20100),
         (0xe0000, 0xe007f), (0x10fff0, 0x10ffff)]


def random_unicode_lines():
    out = []
    for _ in range(400):
        chars = []
        for _ in range(rng.randrange(1, 30)):
            r = rng.random()
            if r < 0.15:
                chars.append(pick(SPACES))
            elif r < 0.25:
                chars.append(pick(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'"]))
            else:
                lo, hi = pick(POOLS)
                cp = rng.randrange(lo, hi + 1)
                chars.append(chr(cp))
        out.append("".join(chars))
    return out


def long_run_lines():
    """Long pre-tokens (hundreds of bytes in one regex match) exercise the heap-based merge loop."""
    out = []
    alphabets = ["abcdefghijklmnopqrstuvwxyz", "etaoinshr", "ab", "\u4e00\u4e8c\u4e09\u4eba\u5927\u5c0f\u65e5\u6708",
                 "\u0430\u0431\u0432\u0433\u0434\u0435\u0451\u0436", "0123456789", "!?.,;:-_=+*#\"'",
                 "\u00e9\u00e8\u00ea\u00eb\u00e0", "\U0001f600\U0001f601\U0001f602\u200d"]
    for i in range(40):
        a = alphabets[i % len(alphabets)]
        n = rng.randrange(60, 700)
        s = "".join(pick(a) for _ in range(n))
        out.append(pick(["", " "]) + s)
    out.extend(["a" * 500, " " * 300 + "x", "\t" * 200, "9" * 400, "!" * 333, "ab" * 250, "\u4e00" * 150])
    return out


def multiline_samples(prose, code):
    out = []
    breaks = ["\n", "\n\n", "\r\n", "\r", " \n", "\n ", "\t\n", "\n\n\n", "\n\t", "  \n  ", "\u2028",
              "\u0085", "\r\n\r\n"]
    for _ in range(150):
        src = pick([prose, code, prose])
        start = rng.randrange(0, max(1, len(src) - 8))
        chunk = src[start:start + rng.randrange(2, 8)]
        out.append("".join(c + pick(breaks) for c in chunk)[: -1 if rng.random() < 0.5 else None])
    out.extend(["\n", "\n\n", "a\nb", "a \nb", "a  \n  b", "Hello\n\nworld\n", "\r\n", "x\r\ny",
                "\n's\n", "nul\u0000byte", "\u0000", " \u0000 \u0000\n", "line1\n    indented\n\tTabbed\n", "trailing\n   ", "\n\n\n\nend"])
    return out


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    kjv = kjv_lines()
    verses = kjv_verses()
    code = python_lines() + CPP_SNIPPETS
    lines = (kjv + verses + code + contraction_lines() + number_lines() + punct_lines() +
             script_lines() + whitespace_lines() + random_unicode_lines() + long_run_lines())
    for l in lines:
        assert "\n" not in l and "\r" not in l and "\0" not in l, repr(l)
    multi = multiline_samples(kjv + verses, code)
    data = os.path.join(root, "tests", "data")
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "tokenizer_corpus.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(data, "tokenizer_corpus_multiline.jsonl"), "w", encoding="utf-8",
              newline="\n") as f:
        for s in multi:
            f.write(json.dumps(s, ensure_ascii=True) + "\n")
    print(f"{len(lines)} lines, {len(multi)} multi-line samples")


if __name__ == "__main__":
    main()
