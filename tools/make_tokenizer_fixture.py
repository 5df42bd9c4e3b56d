#!/usr/bin/env python3
"""Generate tests/fixtures/tokenizer/*: the ids HuggingFace's Python BertTokenizer gives.

The C++ tokenizer in include/mamclip/text/ must reproduce these ids exactly.  Everything
here is deterministic (random.Random with fixed seeds, no network): rerunning with the
pinned versions (tools/requirements.txt) rewrites the files byte for byte.

Vocabularies: ../shared/data/vocab/{pubmedbert-base-uncased-abstract-fulltext,bert-base-uncased}
(override with --vocab-root).  The tokenizer is built directly from vocab.txt:
    BertTokenizer(vocab_file=..., do_lower_case=...)
which is the slow (pure Python) tokenizer.  MAM-CLIP's reference code loads
AutoTokenizer (the Rust "fast" tokenizer); the script prints how many fixture texts the
two disagree on, for the record.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install -r tools/requirements.txt
    /tmp/venv/bin/python tools/make_tokenizer_fixture.py        # writes tests/fixtures/tokenizer/

Files written (UTF-8, JSON / JSON lines, nothing compressed):
  texts.jsonl    one object per line: {"text", "pubmed", "bert", "pubmed_cased"} where the
                 three lists are tokenize() + convert_tokens_to_ids() (no [CLS]/[SEP], no
                 truncation) for: pubmedbert uncased, bert-base-uncased uncased, pubmedbert
                 with do_lower_case=False.  Texts with invalid UTF-8 are stored as
                 {"hex": "..."} and tokenized as bytes.decode("utf-8", "replace").
  extras.json    encode (padding="max_length", truncation=True), decode, the standalone
                 BasicTokenizer, and MAM-CLIP MLM masking with injected decisions.
  unicode.json   per-code-point Unicode data of this Python (general category runs,
                 str.lower() exceptions, NFD / NFC of single characters, isspace, Cased,
                 Case_Ignorable), so the C++ Unicode layer is checked on every code point.
                 It reflects the running Python's Unicode database (3.11: Unicode 14.0).
"""

import argparse
import json
import os
import random
import sys
import unicodedata

import transformers
from transformers import BertTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "..", "tests", "fixtures", "tokenizer")
PUBMED = "pubmedbert-base-uncased-abstract-fulltext"
BERT = "bert-base-uncased"


# ------------------------------------------------------------------ text corpus
# Everything below is composed from templates written for this fixture.

LATERALITY = ["right", "left", "bilateral", "RIGHT", "Left", "R", "L", "both"]
VIEWS = ["CC", "MLO", "ML", "LM", "XCCL", "spot compression", "magnification", "tomosynthesis", "craniocaudal",
         "mediolateral oblique", "CC and MLO", "MLO/CC"]
DENSITY = [
    "The breasts are almost entirely fatty (ACR A).",
    "There are scattered areas of fibroglandular density (ACR B).",
    "The breasts are heterogeneously dense, which may obscure small masses (ACR C).",
    "The breasts are extremely dense, which lowers the sensitivity of mammography (ACR D).",
    "Breast composition: c.", "Density category B.", "ACR density: D", "Fatty breast tissue.",
    "breast density is heterogeneous", "Composition A/B", "dense glandular breast", "fatty-glandular breast",
]
SHAPES = ["oval", "round", "irregular", "lobulated", "ill-defined"]
MARGINS = ["circumscribed", "obscured", "microlobulated", "indistinct", "spiculated"]
CALC_MORPH = ["amorphous", "coarse heterogeneous", "fine pleomorphic", "fine linear", "fine-linear branching",
              "punctate", "round", "dystrophic", "rim", "milk of calcium", "vascular", "popcorn-like"]
CALC_DIST = ["grouped", "regional", "linear", "segmental", "diffuse", "clustered"]
FINDINGS = ["architectural distortion", "focal asymmetry", "global asymmetry", "developing asymmetry",
            "intramammary lymph node", "skin thickening", "nipple retraction", "trabecular thickening",
            "post-surgical scar", "biopsy clip", "axillary lymphadenopathy", "oil cyst", "fibroadenoma",
            "simple cyst", "hamartoma", "lipoma", "duct ectasia", "skin lesion", "implant rupture"]
QUADRANTS = ["upper outer quadrant", "upper inner quadrant", "lower outer quadrant", "lower inner quadrant",
             "retroareolar region", "central region", "axillary tail", "subareolar area", "UOQ", "LIQ"]
DEPTHS = ["anterior depth", "middle depth", "posterior depth", "anterior third", "middle third", "posterior third"]
BIRADS = ["BI-RADS 0: Incomplete - need additional imaging evaluation.", "BI-RADS 1: Negative.",
          "BI-RADS 2: Benign.", "BI-RADS 3: Probably benign.", "BI-RADS 4A: low suspicion for malignancy.",
          "BI-RADS 4B", "BI-RADS 4C", "BI-RADS 5: Highly suggestive of malignancy.",
          "BI-RADS 6: Known biopsy-proven malignancy.", "BIRADS-2", "Bi-Rads category 5",
          "BI-RADS\u00ae 3", "Assessment: BI-RADS 1 (negative).", "birads 4", "BI-RADS: 0", "(BI-RADS 2)",
          "Overall assessment \u2013 BI-RADS 4", "BI-RADS category 3 \u2014 probably benign"]
RECOMMEND = ["Recommend ultrasound-guided core biopsy.", "Short-interval follow-up in 6 months is recommended.",
             "Routine annual screening mammography.", "Correlate clinically.", "Stereotactic biopsy is advised.",
             "Recommend diagnostic mammogram and targeted US.", "MRI may be considered.",
             "Surgical consultation recommended.", "Return to routine screening in 1 year.",
             "Additional views (spot compression) are recommended.", "No further action needed."]
HISTORY = ["Screening exam.", "Palpable lump reported by patient.", "Family history of breast cancer (mother, 45 y).",
           "History of right lumpectomy in 2017.", "BRCA1 carrier.", "Status post reduction mammoplasty.",
           "Patient presents with bloody nipple discharge.", "Baseline mammogram, age 40.",
           "Follow-up after benign biopsy.", "Hormone replacement therapy.", "Prior radiation to the chest."]


def measure(rng):
    r = rng.random()
    if r < 0.3:
        return f"{rng.uniform(0.2, 6.0):.1f} cm"
    if r < 0.5:
        return f"{rng.randint(2, 60)} mm"
    if r < 0.65:
        return f"{rng.uniform(0.3, 4):.1f} x {rng.uniform(0.3, 4):.1f} x {rng.uniform(0.3, 4):.1f} cm"
    if r < 0.8:
        return f"{rng.randint(3, 40)}x{rng.randint(3, 40)}mm"
    if r < 0.9:
        return f"{rng.uniform(0.2, 6.0):.2f}cm"
    return f"{rng.randint(1, 9)},{rng.randint(0, 9)} cm"


def clock(rng):
    h = rng.randint(1, 12)
    r = rng.random()
    if r < 0.3:
        return f"at {h}:00 o'clock"
    if r < 0.5:
        return f"at {h} o'clock"
    if r < 0.7:
        return f"{h}:{rng.choice(['00', '30'])}"
    if r < 0.85:
        return f"at the {h} o\u2019clock position, {rng.randint(1, 12)} cm FN"
    return f"{h}-o'clock, {rng.randint(1, 9)} cm from the nipple"


def date(rng):
    y, m, d = rng.randint(2008, 2024), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"{m:02d}/{d:02d}/{y}", f"{y}-{m:02d}-{d:02d}", f"{d}.{m}.{y}", f"{y}"])


def radiology_text(rng):
    parts = []
    kind = rng.randint(0, 9)
    lat = rng.choice(LATERALITY)
    if kind == 0:
        parts.append(rng.choice(DENSITY))
        parts.append(f"No suspicious mass, calcification or architectural distortion in the {lat} breast.")
        parts.append(rng.choice(BIRADS))
    elif kind == 1:
        parts.append(f"{rng.choice(SHAPES).capitalize()} {rng.choice(MARGINS)} mass in the {lat} breast "
                     f"{clock(rng)}, {rng.choice(DEPTHS)}, measuring {measure(rng)}.")
        parts.append(rng.choice(RECOMMEND))
    elif kind == 2:
        parts.append(f"{rng.choice(CALC_DIST).capitalize()} {rng.choice(CALC_MORPH)} calcifications "
                     f"in the {rng.choice(QUADRANTS)} of the {lat} breast, spanning {measure(rng)}.")
        parts.append(rng.choice(BIRADS))
    elif kind == 3:
        parts.append(f"FINDINGS: {rng.choice(VIEWS)} views of the {lat} breast. {rng.choice(DENSITY)}")
        parts.append(f"There is {rng.choice(['a', 'an', 'no'])} {rng.choice(FINDINGS)} {clock(rng)}.")
        parts.append(f"IMPRESSION: {rng.choice(BIRADS)}")
    elif kind == 4:
        parts.append(rng.choice(HISTORY))
        parts.append(f"Compared with prior exam dated {date(rng)}.")
        parts.append(rng.choice(["No significant interval change.", "Stable post-surgical changes.",
                                 f"New {rng.choice(FINDINGS)} since {date(rng)}.",
                                 f"The previously seen {measure(rng)} mass has increased to {measure(rng)}."]))
    elif kind == 5:
        # Terse caption style used for image-text pretraining.
        parts.append(f"{lat} {rng.choice(VIEWS)} mammogram, {rng.choice(DENSITY).lower().rstrip('.')}, "
                     f"{rng.choice(SHAPES)} {rng.choice(MARGINS)} mass {clock(rng)}, {rng.choice(BIRADS).lower()}")
    elif kind == 6:
        parts.append(f"{lat.upper()} BREAST: {rng.choice(FINDINGS).upper()} ({measure(rng)}) IN THE "
                     f"{rng.choice(QUADRANTS).upper()}; {rng.choice(BIRADS).upper()}")
    elif kind == 7:
        tissue = rng.choice(["fatty", "fatty-glandular", "dense-glandular"])
        ab = rng.choice(["calcification", "well-defined/circumscribed mass", "spiculated mass",
                         "ill-defined mass", "architectural distortion", "asymmetry", "normal"])
        sev = rng.choice(["benign", "malignant", ""])
        parts.append(f"{tissue} breast tissue with {ab}{(' (' + sev + ')') if sev else ''} "
                     f"centred at x={rng.randint(1, 1023)}, y={rng.randint(1, 1023)}, radius {rng.randint(3, 197)} px")
    elif kind == 8:
        tr = rng.choice(["Sa\u011f meme", "Sol meme", "Bilateral memeler"])
        dens = rng.choice(["yo\u011fun", "ya\u011fl\u0131", "heterojen"])
        parts.append(f"{tr}: {dens} parankim, "
                     f"{rng.choice(['kalsifikasyon', 'kitle', 'asimetri', 'distorsiyon'])} izlenmedi. "
                     f"BI-RADS {rng.choice('01245')}. \u0130stanbul, {date(rng)}.")
    else:
        parts.append(f"{rng.choice(SHAPES).capitalize()} mass with {rng.choice(MARGINS)} margins ({measure(rng)}), "
                     f"{rng.choice(['hypoechoic', 'isoechoic', 'anechoic', 'complex cystic and solid'])} on ultrasound; "
                     f"{rng.choice(['parallel', 'not parallel'])} orientation; "
                     f"{rng.choice(['posterior enhancement', 'posterior shadowing', 'no posterior features'])}.")
        parts.append(rng.choice(RECOMMEND))
    return " ".join(parts)


DISEASES = ["breast cancer", "ductal carcinoma in situ", "invasive lobular carcinoma", "triple-negative breast cancer",
            "type 2 diabetes", "non-small cell lung cancer", "hepatocellular carcinoma", "sepsis",
            "Alzheimer's disease", "chronic kidney disease", "COVID-19", "melanoma", "rheumatoid arthritis"]
MARKERS = ["BRCA1/2", "HER2-positive", "ER+/PR+", "Ki-67", "TP53", "IL-6", "TNF-\u03b1", "\u03b2-catenin",
           "CD4+ T cells", "p16^INK4a", "1,25(OH)2D3", "[18F]FDG PET/CT", "SUVmax", "PD-L1", "miR-21",
           "NF-\u03baB", "TGF-\u03b21", "HbA1c", "CA 15-3", "PIK3CA", "\u03b3-H2AX", "Na+/K+-ATPase"]
DESIGNS = ["retrospective cohort study", "prospective multicentre trial", "randomized controlled trial",
           "case-control study", "meta-analysis", "cross-sectional survey", "single-centre observational study"]
SUBJECTS = ["women", "patients", "participants", "mice", "screening examinations", "biopsy specimens"]
METRICS = ["sensitivity", "specificity", "area under the ROC curve (AUC)", "hazard ratio (HR)", "odds ratio",
           "positive predictive value", "overall survival", "recall rate", "Dice coefficient", "F1 score"]
UNITS = ["\u03bcg/mL", "ng/mL", "mmol/L", "mg/kg", "\u00d710^9/L", "IU/L", "kDa", "Gy", "mSv", "\u00b0C"]


def abstract_text(rng):
    d = rng.choice(DISEASES)
    n = rng.randint(12, 250000)
    s = []
    k = rng.randint(0, 7)
    if k == 0:
        s.append(f"Background: {d.capitalize()} remains a leading cause of morbidity among {rng.choice(SUBJECTS)}.")
        s.append(f"We conducted a {rng.choice(DESIGNS)} of {n:,} {rng.choice(SUBJECTS)} to evaluate "
                 f"{rng.choice(MARKERS)} expression.")
    elif k == 1:
        lo = rng.uniform(0.3, 0.9)
        op = rng.choice(["<", "=", "\u2264"])
        s.append(f"The {rng.choice(METRICS)} was {lo:.2f} (95% CI, {lo - 0.1:.2f}\u2013{lo + 0.05:.2f}; "
                 f"p {op} {rng.choice(['0.001', '0.05', '.03', '1e-4'])}).")
    elif k == 2:
        s.append(f"Serum {rng.choice(MARKERS)} levels ({rng.uniform(1, 500):.1f} \u00b1 {rng.uniform(0.1, 50):.1f} "
                 f"{rng.choice(UNITS)}) were {rng.choice(['higher', 'lower', 'unchanged'])} in {d} "
                 f"(n = {rng.randint(5, 900)}) than in controls.")
    elif k == 3:
        size = rng.choice(["1024\u00d7768", "512 x 512", "2048\u00d71024"])
        s.append(f"Methods: Deep convolutional networks (ConvNeXt-{rng.choice(['T', 'S', 'B'])}, ResNet-50) were "
                 f"trained on {n} mammograms at {size} pixels.")
        s.append(f"Results: The model reached an AUC of 0.{rng.randint(60, 99)} and a macro-F1 of 0.{rng.randint(40, 95)}.")
    elif k == 4:
        s.append(f"Conclusions: {rng.choice(MARKERS)} is a candidate biomarker for {d}; "
                 f"further validation in {rng.choice(['independent', 'external', 'multi-ethnic'])} cohorts is warranted.")
    elif k == 5:
        s.append(f"Kaplan\u2013Meier analysis showed a median survival of {rng.randint(3, 120)} months "
                 f"(HR {rng.uniform(0.3, 2.5):.2f}; log-rank P={rng.uniform(0, 0.2):.3f}).")
    elif k == 6:
        s.append(f"Cells were treated with {rng.randint(1, 100)} {rng.choice(UNITS)} of "
                 f"{rng.choice(['doxorubicin', 'tamoxifen', 'cisplatin', 'paclitaxel', 'trastuzumab'])} for "
                 f"{rng.randint(6, 72)} h at 37 \u00b0C, and {rng.choice(MARKERS)} was quantified by qRT-PCR.")
    else:
        who = rng.choice(["female", "aged \u2265 50 years"])
        s.append(f"Among {n} {rng.choice(SUBJECTS)} ({rng.randint(20, 80)}% {who}), "
                 f"{rng.randint(1, 99)}.{rng.randint(0, 9)}% had {d}; adjusted OR = {rng.uniform(0.5, 4):.2f} "
                 f"[{rng.uniform(0.3, 1):.2f}, {rng.uniform(1, 6):.2f}].")
    return " ".join(s)


def hand_edge_cases():
    long_ascii = "a" * 100
    out = [
        "", " ", "   ", "\t", "\n", "\r\n", " \t\r\n ", "\u00a0", "\u3000", "\u2028", "\u2029", "\u0085",
        "\x00", "\ufffd", "\x00\ufffd\x01\x7f", "a\x00b", "a\ufffdb", "x\u200by", "\ufeffBOM at start",
        "tab\tseparated\twords", "line\nbreaks\r\nand\rreturns", "vertical\x0btab\x0cform feed",
        "unit\x1fsep\x1crecord", "soft\u00adhyphen", "zero\u200cwidth\u200djoiner", "rtl \u200f mark \u200e",
        "[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]", "[CLS] breast [SEP]", "foo[CLS]bar", "[MASK][MASK][MASK]",
        "the [MASK] is benign", "[cls] [mask] [Mask] [CLS ]", "[ CLS]", "[[CLS]]", "[CLS[SEP]]", "[C\x00LS]",
        "[MAS\u212a] kelvin", "[MASK].", "x[MASK]y", "[UNK] unknown", "[PAD][PAD] padding",
        "!!!", "...", "?!?!", "---", "(((nested)))", "a.b.c", "e.g.", "i.e.,", "$100", "50%", "#hashtag",
        "@user", "a&b", "x^2", "~tilde~", "`backtick`", "back\\slash", "pipe|pipe", "under_score",
        "\"quoted\"", "'single'", "\u201csmart quotes\u201d", "\u2018single smart\u2019", "\u00abguillemets\u00bb",
        "\u2026", "\u2014dash\u2013", "\u00bfQu\u00e9?", "\u00a1Hola!", "\u3002\u3001", "\uff01\uff1f",
        "caf\u00e9", "cafe\u0301", "na\u00efve", "r\u00e9sum\u00e9", "\u00c5ngstr\u00f6m", "\u212bngstr\u00f6m",
        "Stra\u00dfe", "STRASSE \u1e9e", "\u0130stanbul", "\u0131\u015f\u0131k", "I\u0307", "\u00d8resund",
        "\u0141\u00f3d\u017a", "\u010ce\u0161ka", "Dvo\u0159\u00e1k", "\u0152uvre \u0153", "\u00c6sir", "\ufb01nance",
        "\uff21\uff22\uff23 fullwidth \uff41\uff42\uff43", "\u2460\u2461\u2462", "\u24b6\u24b7 circled",
        "\u216b roman", "x\u00b2 + y\u00b3", "H\u2082O", "\U0001d400\U0001d401 math", "\u2126 ohm \u03a9",
        "\u039f\u0394\u039f\u03a3", "\u03a3\u0391\u03a3 \u03a3", "\u1f08\u0345", "\u03b1\u03b2\u03b3\u03b4",
        "\u041c\u043e\u0441\u043a\u0432\u0430", "\u0423\u0417\u0418 \u043c\u043e\u043b\u043e\u0447\u043d\u043e\u0439 \u0436\u0435\u043b\u0435\u0437\u044b",
        "\u4e73\u817a\u764c", "\u4e73\u623f X\u7ebf\u6444\u5f71", "\u6f22\u5b57abc\u6f22", "\U00020000\U0002a700",
        "\U0002b740\U0002b820\U0002ceaf", "\uf900\ufa0e\ufaff", "\U0002f800\U0002fa1d", "\u3400\u4dbf",
        "\u3041\u3093 \u30ab\u30bf\u30ab\u30ca", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
        "\ud55c\uad6d\uc5b4 \uc720\ubc29\uc554", "\u1100\u1161\u11a8", "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22",
        "\u0633\u0631\u0637\u0627\u0646 \u0627\u0644\u062b\u062f\u064a", "\u05e2\u05d1\u05e8\u05d9\u05ea",
        "\u0939\u093f\u0928\u094d\u0926\u0940", "\u0915\u094d\u0937", "\u10e5\u10d0\u10e0\u10d7\u10e3\u10da\u10d8",
        "\u0531\u0580\u0574\u0565\u0576\u056b\u0561", "\u1200\u1208", "\u13a0\u13a1 cherokee \uab70",
        "\U0001f600", "\U0001f469\u200d\U0001f52c", "\U0001f1f9\U0001f1f7 flag", "\U0001f44d\U0001f3fd",
        "mass \U0001f50d found", "\u2764\ufe0f", "\u00a9 \u00ae \u2122", "\u2190\u2192\u2194", "\u2200x\u2203y",
        "\u2211\u220f\u221a\u221e", "\u00b1\u2264\u2265\u2260", "\u00b0C \u2103", "\u00b5m \u03bcm",
        "e\u0301\u0302\u0303", "a\u0323\u0307", "a\u0307\u0323", "q\u0307\u0323", "\u0301leading mark",
        "\u0301", "\u0301\u0302", "o\u0308\u0304", "\u1e69", "s\u0323\u0307", "\u0958", "\u2adc",
        "\u0f73", "\u0344", "\u0340\u0341", "\u1fee", "\u1fbb\u1fbe",
        long_ascii, "a" * 101, "b" * 99 + "\u00e9", "\u00e9" * 100, "\u00e9" * 101, "e\u0301" * 51,
        "\u4e73" * 150, "x" * 250 + " short", "pneumonoultramicroscopicsilicovolcanoconiosis",
        ("supercalifragilistic" * 5) + " ok", ("##" * 60), "##", "##s", "#", "##breast",
        "mammography" * 9, "mammography" * 10, "word " * 200,
        "BI-RADS 4A (ACR C) 1.2 cm at 4:00 o'clock", "R MLO 10:30 3cm FN", "2.5x1.8x3.0cm",
        "T1N0M0 G2 ER 90% PR 60% HER2 1+ Ki-67 15%", "pT2(m)N1a(2/15)", "10^-3 mm\u00b2/s", "ADC=0.9\u00d710\u207b\u00b3",
        "mixed \u4e73\u817a \u0645\u0627\u0645\u0648\u06af\u0631\u0627\u0641\u06cc \u043c\u0430\u043c\u043c\u043e\u0433\u0440\u0430\u0444\u0438\u044f mammography",
        "UPPER lower MiXeD", "ALL CAPS REPORT: NEGATIVE.", "dont don't do n't", "it's o'clock",
        "\U0001f9ec DNA \U0001f9ea lab", "\U000e0041 tag", "\uf8ff private", "\U000f0000 plane15",
        "\u0378 unassigned \ufffe\uffff", "\u0600\u0601 arabic number sign", "\u061c alm", "\u180e mvs",
        "\u115f\u1160 filler", "\u2060 word joiner", "\u2062 invisible times", "\u034f cgj",
        "\u00df\u1e9e\u0149\u01f0", "\u0390\u03b0", "\u1e96\u1e97\u1e98", "\ufb00\ufb03\ufb06", "\u0587",
        "\u01c4\u01c5\u01c6 dz", "\u01f1\u01f2\u01f3", "\u1f88\u1f80", "\u2c65\u023a", "\ua7ae\u026a",
        "\u10a0\u2d00", "\u13f8\u13f0", "\U00010400\U00010428 deseret", "\U0001e900\U0001e922 adlam",
        "\u0345", "\u03c2\u03c3\u03a3", "\u1e9b\u0323", "\u212a\u212b\u2126",
    ]
    return out


PUNCT_POOL = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["\u00a1", "\u00a7", "\u00b6", "\u00b7", "\u00bf",
                                                             "\u2010", "\u2013", "\u2014", "\u2020", "\u2022",
                                                             "\u2030", "\u203b", "\u3001", "\u300c", "\uff0c"]


def assigned_pool(rng, count):
    # Random assigned (in this Python's Unicode) code points from every plane in use.
    out = []
    while len(out) < count:
        r = rng.random()
        if r < 0.4:
            cp = rng.randint(0x80, 0x2FFF)
        elif r < 0.6:
            cp = rng.randint(0x3000, 0xFFFF)
        elif r < 0.8:
            cp = rng.randint(0x10000, 0x1FFFF)
        else:
            cp = rng.randint(0x20000, 0x3134F)
        if 0xD800 <= cp < 0xE000:
            continue
        if unicodedata.category(chr(cp)) == "Cn":
            continue
        out.append(chr(cp))
    return out


def random_edge_text(rng, words):
    pieces = []
    for _ in range(rng.randint(1, 12)):
        r = rng.random()
        if r < 0.3:
            pieces.append(rng.choice(words))
        elif r < 0.45:
            pieces.append("".join(rng.choice(PUNCT_POOL) for _ in range(rng.randint(1, 4))))
        elif r < 0.7:
            pieces.append("".join(assigned_pool(rng, rng.randint(1, 5))))
        elif r < 0.8:
            pieces.append(rng.choice(words).upper() + rng.choice(["\u0301", "\u0308", "\u0327", "\u0323\u0301", ""]))
        elif r < 0.9:
            pieces.append(rng.choice(["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]", "[mask]", "\x00", "\ufffd",
                                      "\u200b", "\x07", "\u2028"]))
        else:
            pieces.append(chr(rng.randint(0x20, 0x7E)) * rng.randint(1, 3))
        pieces.append(rng.choice([" ", " ", " ", "", "\t", "\n", "\u00a0", "  "]))
    return "".join(pieces)


INVALID_UTF8 = [
    b"abc\xffdef", b"\xc3\x28 invalid 2-byte", b"\xe2\x82 truncated", b"\xe2\x82\xac euro ok",
    b"\xed\xa0\x80 surrogate", b"\xf0\x9f\x98 cut emoji", b"\xf4\x90\x80\x80 above U+10FFFF",
    b"\xc0\xaf overlong slash", b"\xe0\x80\xaf overlong", b"\x80\x80 continuation only", b"mass\xfe\xfe size",
    b"caf\xc3\xa9 caf\xe9", b"\xf0\x90\x80", b"end \xc3",
]


def nfc_sensitive_texts(tokenizers, limit=160):
    """Texts whose ids change if the NFC step is skipped, in at least one configuration.

    Most texts tokenize the same with or without NFC (accent stripping decomposes anyway), so
    these are searched for: decomposed letters, singleton decompositions (Kelvin sign, CJK
    compatibility ideographs), composition exclusions and conjoining Hangul jamo."""
    import transformers.models.bert.tokenization_bert as tb

    class NoNFC:
        def __getattr__(self, name):
            return getattr(unicodedata, name)

        def normalize(self, form, s):
            return s if form == "NFC" else unicodedata.normalize(form, s)

    cands = []
    for cp in list(range(0xC0, 0x590)) + list(range(0x1E00, 0x2000)) + list(range(0x2100, 0x2200)) + \
            list(range(0xF900, 0xFB50)) + list(range(0x0900, 0x0E00)):
        ch = chr(cp)
        d = unicodedata.normalize("NFD", ch)
        if d != ch:
            cands.append(d)  # decomposed: NFC recomposes it
        if unicodedata.normalize("NFC", ch) != ch:
            cands.append(ch)  # singleton or exclusion
    for lead in range(0x1100, 0x1113, 3):
        for vowel in range(0x1161, 0x1176, 4):
            cands.append(chr(lead) + chr(vowel) + chr(0x11A8 + (lead % 5)))
    texts = []
    for c in cands:
        for t in (c, "Caf" + c + "s", c.upper() + " x"):
            plain = [ids_of(tok, t) for tok in tokenizers]
            saved = tb.unicodedata
            tb.unicodedata = NoNFC()
            try:
                no_nfc = [ids_of(tok, t) for tok in tokenizers]
            finally:
                tb.unicodedata = saved
            if plain != no_nfc:
                texts.append(t)
                break
    step = max(1, len(texts) // limit)
    return texts[::step][:limit]


def build_texts():
    rng = random.Random(20240531)
    words_rng = random.Random(7)
    texts = []
    texts += [radiology_text(rng) for _ in range(1100)]
    texts += [abstract_text(rng) for _ in range(600)]
    texts += hand_edge_cases()
    base_words = ["breast", "mass", "Calcification", "BI-RADS", "asymmetry", "the", "lesion", "ACR", "cm",
                  "o'clock", "benign", "MALIGNANT", "biopsy", "\u00e9cho", "\u4e73", "x2", "3.5"]
    texts += [random_edge_text(words_rng, base_words) for _ in range(400)]
    # Dedupe, keep order.
    seen = set()
    out = []
    for t in texts:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


# ------------------------------------------------------------------ tokenizers

def ids_of(tok, text):
    return tok.convert_tokens_to_ids(tok.tokenize(text))


def mlm_apply(tok, caption, decisions):
    """MAM-CLIP's base_masker (train/files/dataset.py) with its random draws replaced by
    `decisions`: one per whitespace word, "keep" | "mask" | "unchanged" | ["random", token]."""
    def word_len(w):
        return len(tok.encode(w)) - 2

    inp, lab = [], []
    for word, d in zip(caption.split(), decisions):
        if d == "keep":
            inp.append(word)
            lab += ["[PAD]"] * word_len(word)
        elif d == "mask":
            inp += ["[MASK]"] * word_len(word)
            lab.append(word)
        elif d == "unchanged":
            inp.append(word)
            lab.append(word)
        else:
            inp.append(d[1].replace("</w>", ""))
            lab.append(word)
    return " ".join(inp), " ".join(lab)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab-root", default=os.path.join(HERE, "..", "..", "shared", "data", "vocab"))
    ap.add_argument("--out", default=OUT_DIR)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    pv = os.path.join(args.vocab_root, PUBMED, "vocab.txt")
    bv = os.path.join(args.vocab_root, BERT, "vocab.txt")
    pub = BertTokenizer(vocab_file=pv, do_lower_case=True)
    bert = BertTokenizer(vocab_file=bv, do_lower_case=True)
    pub_cased = BertTokenizer(vocab_file=pv, do_lower_case=False)

    texts = build_texts()
    texts += [t for t in nfc_sensitive_texts([pub, bert, pub_cased]) if t not in set(texts)]
    n_lines = 0
    with open(os.path.join(args.out, "texts.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        for t in texts:
            rec = {"text": t, "pubmed": ids_of(pub, t), "bert": ids_of(bert, t), "pubmed_cased": ids_of(pub_cased, t)}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n_lines += 1
        for b in INVALID_UTF8:
            t = b.decode("utf-8", "replace")
            rec = {"hex": b.hex(), "pubmed": ids_of(pub, t), "bert": ids_of(bert, t), "pubmed_cased": ids_of(pub_cased, t)}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n_lines += 1

    extras = {"versions": {"transformers": transformers.__version__, "python": sys.version.split()[0],
                           "unidata": unicodedata.unidata_version}}

    # encode(): padding="max_length", truncation=True, as MAM-CLIP calls the tokenizer.
    rng = random.Random(99)
    sample = [texts[i] for i in sorted(rng.sample(range(len(texts)), 60))] + ["", "[MASK]", "word " * 40]
    enc = []
    for t in sample:
        for ml in (8, 21):
            e = pub(t, padding="max_length", truncation=True, max_length=ml)
            enc.append({"text": t, "max_length": ml, "input_ids": e["input_ids"],
                        "attention_mask": e["attention_mask"]})
    e = pub(texts[0], padding="max_length", truncation=True, max_length=100)
    enc.append({"text": texts[0], "max_length": 100, "input_ids": e["input_ids"], "attention_mask": e["attention_mask"]})
    extras["encode"] = enc

    # decode(): HF defaults (clean_up_tokenization_spaces=True for BertTokenizer) and variants.
    dec = []
    for t in sample[:40]:
        ids = pub(t)["input_ids"]
        dec.append({"ids": ids, "vocab": "pubmed", "skip_special_tokens": False, "clean_up": True,
                    "text": pub.decode(ids)})
        dec.append({"ids": ids, "vocab": "pubmed", "skip_special_tokens": True, "clean_up": True,
                    "text": pub.decode(ids, skip_special_tokens=True)})
        dec.append({"ids": ids, "vocab": "pubmed", "skip_special_tokens": False, "clean_up": False,
                    "text": pub.decode(ids, clean_up_tokenization_spaces=False)})
    odd = [2, 99999, -1, 4, 4, 3, 0, 0, 1, 17, 1012, 2015, 3]
    for skip in (False, True):
        dec.append({"ids": odd, "vocab": "bert", "skip_special_tokens": skip, "clean_up": True,
                    "text": bert.decode(odd, skip_special_tokens=skip)})
    extras["decode"] = dec

    # The standalone BasicTokenizer: str.lower() with its final-sigma rule (BertTokenizer itself
    # lower-cases character by character first, so the rule never fires there).
    from transformers.models.bert.tokenization_bert import BasicTokenizer
    basic_texts = ["\u039f\u0394\u039f\u03a3 \u03a3\u0391\u03a3", "A\u03a3", "A\u03a3b", "A\u03a3.", "A'\u03a3",
                   "\u03a3", "a\u0301\u03a3", "\u02b0\u03a3", "\u24b6\u03a3 \u24b6\u03a3\u24b6", "1\u03a3",
                   "\u1f08\u03a3\u0345", "x\u00ad\u03a3", "A\u03a3\u0301", "A\u03a3\u0301b", "\u0130\u03a3",
                   "Caf\u00e9 [MASK] [CLS]x", "\u212a\u03a3", "\U00010400\u03a3", "\u00aa\u03a3", "\u2160\u03a3"]
    basic = []
    for cfg in ({"do_lower_case": True}, {"do_lower_case": False}, {"do_lower_case": False, "strip_accents": True},
                {"do_lower_case": True, "strip_accents": False}, {"do_lower_case": True, "tokenize_chinese_chars": False}):
        bt = BasicTokenizer(**cfg)
        for t in basic_texts + ["\u4e73\u817a\u764c abc", "\u00c9cole \u00e9t\u00e9"]:
            basic.append({"config": cfg, "text": t, "never_split": ["[MASK]", "[CLS]"],
                          "tokens": bt.tokenize(t, never_split=["[MASK]", "[CLS]"])})
    extras["basic"] = basic

    # MLM masking with injected decisions (the random draws are ours; the string semantics are MAM-CLIP's).
    mrng = random.Random(1234)
    vocab_list = [t for t in pub.vocab.keys() if t not in pub.all_special_tokens]
    captions = [radiology_text(mrng) for _ in range(30)] + ["word " * 60, "single", "", "a  b\tc\u00a0d\u2028e",
                                                            "\u4e73\u817a\u764c mass", "[MASK] x [CLS]",
                                                            "bell\x07 \x07 \u200b x"]
    mlm = []
    for c in captions:
        decs = []
        for _ in c.split():
            r = mrng.random()
            if r < 0.4:
                decs.append("keep")
            elif r < 0.7:
                decs.append("mask")
            elif r < 0.85:
                decs.append(["random", mrng.choice(vocab_list)])
            else:
                decs.append("unchanged")
        inp, lab = mlm_apply(pub, c, decs)
        ei = pub(inp, padding="max_length", truncation=True, max_length=40)
        el = pub(lab, padding="max_length", truncation=True, max_length=40)
        mlm.append({"caption": c, "decisions": decs, "input": inp, "label": lab, "max_length": 40,
                    "input_ids": ei["input_ids"], "attention_mask": ei["attention_mask"], "labels": el["input_ids"]})
    extras["mlm"] = mlm

    with open(os.path.join(args.out, "extras.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(extras, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")

    write_unicode(os.path.join(args.out, "unicode.json"))

    # For the record: where the Rust fast tokenizer (what AutoTokenizer gives MAM-CLIP) differs.
    try:
        from transformers import BertTokenizerFast
        fast = BertTokenizerFast(vocab_file=pv, do_lower_case=True)
        diff = [t for t in texts if fast(t, add_special_tokens=False)["input_ids"] != ids_of(pub, t)]
        print(f"fast vs slow (pubmed, uncased): {len(diff)} of {len(texts)} texts differ")
        for t in diff[:15]:
            print("  ", repr(t)[:100])
    except Exception as exc:  # the fast tokenizer is informational only
        print("fast tokenizer comparison skipped:", exc)

    sizes = {n: os.path.getsize(os.path.join(args.out, n)) for n in ("texts.jsonl", "extras.json", "unicode.json")}
    print(f"{n_lines} texts; sizes {sizes}, total {sum(sizes.values())} bytes")


def runs(pred):
    """[start, end] inclusive ranges of code points where pred holds (surrogates excluded)."""
    out = []
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        if pred(chr(cp)):
            if out and out[-1][1] == cp - 1:
                out[-1][1] = cp
            else:
                out.append([cp, cp])
    return out


def write_unicode(path):
    cats = []  # [start, category] runs over 0..0x10FFFF, surrogates included (Cs)
    prev = None
    for cp in range(0x110000):
        c = unicodedata.category(chr(cp))
        if c != prev:
            cats.append([cp, c])
            prev = c
    lower, nfd, nfc = [], [], []
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        ch = chr(cp)
        lo = ch.lower()
        if lo != ch:
            lower.append([cp] + [ord(x) for x in lo])
        if 0xAC00 <= cp <= 0xD7A3:
            continue  # Hangul syllables decompose algorithmically; the test checks them by formula
        d = unicodedata.normalize("NFD", ch)
        if d != ch:
            nfd.append([cp] + [ord(x) for x in d])
        c = unicodedata.normalize("NFC", ch)
        if c != ch:
            nfc.append([cp] + [ord(x) for x in c])

    def cased(c):
        return c.islower() or c.isupper() or c.istitle()

    def case_ignorable(c):
        # The final-sigma rule skips case-ignorable characters: "A" c "Σ" ends in ς exactly
        # when c is case-ignorable or cased; cased ones are listed separately.
        return ("A" + c + "\u03a3").lower()[-1] == "\u03c2" and not cased(c)

    data = {
        "unidata": unicodedata.unidata_version,
        "categories": cats,
        "lower": lower,
        "nfd": nfd,
        "nfc": nfc,
        "isspace": [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000 and chr(cp).isspace()],
        "cased": runs(cased),
        "case_ignorable_not_cased": runs(case_ignorable),
    }
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(data, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
