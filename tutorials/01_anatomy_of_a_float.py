# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. Anatomy of a float
#
# A neural network's weights sit in memory as bit patterns. When one bit of a pattern flips (radiation,
# ageing, a memory run at too low a voltage, an attacker), the weight becomes another number. Which
# number depends on *which* bit flipped and on the *format* the weight is stored in. This notebook takes
# the formats apart.
#
# **Learning goals.** After this notebook you can
#
# 1. read the sign, exponent and mantissa fields of float32, float16, bfloat16 and FP8, and the fields
#    of a fixed-point number, and decode a bit pattern by hand;
# 2. predict what a single bit flip does to a value: tiny in the mantissa, a factor of
#    $2^{2^k}$ in the exponent, and sometimes `inf` or `NaN`;
# 3. recognise the special values (zero and `-0`, subnormals, `inf`, `NaN`) and how few flips separate
#    an ordinary weight from them;
# 4. compute the *exact* probability that a stored value reads back non-finite when every bit flips
#    independently with probability $p$, and check it by exact enumeration and by Monte Carlo (and know
#    when a Monte Carlo check cannot fail).
#
# Everything here uses `saf_ref.bits`; bit 0 is always the least significant bit of the stored word.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np

from saf_ref.bits import (
    expected_corrupted,
    flip_table,
    flip_value,
    get_format,
    inject_bit_errors,
    prob_nonfinite,
)
from saf_ref.experiments.stats import wilson_interval

plt.rcParams.update({"figure.dpi": 110, "figure.facecolor": "white", "axes.grid": True, "grid.alpha": 0.3})
FIELD_COLORS = {"sign": "tab:red", "exponent": "tab:blue", "mantissa": "tab:green",
                "integer": "tab:blue", "fraction": "tab:green"}


def bit_string(code, fmt):
    """The stored word of ``code`` as bits, most significant first, one group per field."""
    bits = format(int(code), f"0{fmt.nbits}b")
    groups, start = [], 0
    for field in sorted(fmt.fields.values(), key=lambda f: -f.msb):  # sign first
        groups.append(bits[start : start + field.width])
        start += field.width
    return " ".join(groups)


def check(test, answer, solution):
    """Exercises: run ``test`` on your answer; while the TODO cell still says ``None``, on the solution."""
    if answer is None:
        print("(no answer in the TODO cell yet: checking the worked solution instead)")
        answer = solution
    test(answer)
    print("correct")


def print_table(headers, rows):
    """Print rows as an aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for k, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


# %% [markdown]
# ## 1. A float is three integers
#
# An IEEE binary format splits its word into a **sign** bit $s$, an **exponent** field $e$ of $E$ bits
# and a **mantissa** (fraction) field $f$ of $m$ bits. A *normal* value ($0 < e < 2^E - 1$) means
#
# $$x = (-1)^s \cdot \left(1 + \frac{f}{2^m}\right) \cdot 2^{\,e - \text{bias}}, \qquad
#   \text{bias} = 2^{E-1} - 1 .$$
#
# Let us store 0.1 in float32 and look at its word.

# %%
fp32 = get_format("float32")
word = fp32.encode(np.float32(0.1))  # a 0-d uint32 array
code = int(word)
s, e, f = (int(fp32.fields[name].extract(word)) for name in ("sign", "exponent", "mantissa"))
print(f"0.1 in float32: code 0x{code:08X}")
print("bits  ", bit_string(code, fp32), "  (sign | exponent | mantissa)")
print(f"s = {s}, e = {e} (e - bias = {e - fp32.bias}), f = {f}")

by_hand = (-1) ** s * (1 + f / 2**23) * 2.0 ** (e - 127)
print(f"(-1)^s * (1 + f/2^23) * 2^(e-127) = {by_hand!r}")
# the hand decoding, the library's decoder and NumPy's own float32 all agree exactly
assert by_hand == float(fp32.decode(word)) == float(np.float32(0.1))
assert np.uint32(code) == np.float32(0.1).view(np.uint32)

# %% [markdown]
# 0.1 is not exactly representable in binary: the stored value is the nearest float32,
# `0.10000000149011612`. The same recipe, with other field widths, gives every IEEE format that
# machine learning uses. Compare the range (`max finite`) with the precision (`ulp(1)`, the gap
# between 1 and the next value).

# %%
rows = []
for name in ("float64", "float32", "float16", "bfloat16", "float8_e5m2", "float8_e4m3fn"):
    fmt = get_format(name)
    rows.append([name, fmt.nbits, fmt.fields["exponent"].width, fmt.fields["mantissa"].width, fmt.bias,
                 f"{fmt.max_finite:.4g}", f"{fmt.min_normal:.3g}", f"{fmt.min_subnormal:.3g}",
                 f"{2.0 ** -fmt.mantissa_bits:.3g}", "yes" if fmt.has_infinity else "no"])
print_table(["format", "bits", "E", "m", "bias", "max finite", "min normal", "min subnormal", "ulp(1)",
             "inf?"], rows)

# %% [markdown]
# bfloat16 keeps float32's 8 exponent bits (same range) and drops mantissa bits; float16 does the
# opposite trade. The two FP8 formats trade again: `e5m2` keeps range, `e4m3fn` keeps precision and gives
# up infinity altogether (more about that below).
#
# ### Fixed point
#
# A two's complement fixed-point number `qM.N` has a sign bit, $M$ integer bits and $N$ fraction bits.
# Its word, read as a signed integer $k$, means $k \cdot 2^{-N}$. `q2.5` uses 8 bits and covers
# $[-4, 4 - 2^{-5}]$ in steps of $2^{-5}$. There is no exponent, so every word is a finite number.

# %%
q25 = get_format("q2.5")
print(q25, "fields:", {n: (fld.msb, fld.lsb) for n, fld in q25.fields.items()})
for x in (1.375, -0.5, 3.2):
    c = q25.encode(np.float32(x))  # a 0-d uint8 array
    print(f"{x:>6} -> code 0x{int(c):02X} = {bit_string(c, q25)} -> {float(q25.decode(c))}")

# every one of the 256 words: the decoder agrees with NumPy's int8 view divided by 2^5
all_codes = np.arange(256, dtype=np.uint8)
assert np.array_equal(q25.decode(all_codes), all_codes.view(np.int8) / np.float32(32))

# %% [markdown]
# ## 2. Flip every bit
#
# `flip_table(x, fmt)` stores `x`, flips each bit in turn and decodes the result. Here is 0.1 in
# float16 (16 bits, so the whole table fits on a screen).

# %%
table = flip_table(0.1, "float16")
print(f"0.1 stored as float16: {table.value!r}, bits {bit_string(table.code, get_format('float16'))}")
print_table(["bit", "field", "value after flip", "relative change", "class"],
            [[r.bit, r.field, f"{r.value:.6g}",
              "undefined" if r.relative_change is None else f"{r.relative_change:+.3g}", r.value_class]
             for r in table.rows])

# %% [markdown]
# Three regimes, one per field:
#
# * **mantissa** bit $b$ adds or subtracts $2^{b-m} \cdot 2^{e-\text{bias}}$: at most a factor of 2,
#   usually far less;
# * **exponent** bit $b$ multiplies or divides the value by $2^{2^{b-m}}$: the top exponent bit of a
#   float32 multiplies by $2^{128} \approx 3.4 \cdot 10^{38}$;
# * **sign**: $x \to -x$.
#
# The library must get these exactly right; we check the first two claims against exact rational
# arithmetic for every bit of several values (Python's `float` holds each of these values exactly).

# %%
def check_flip_rules(x, fmt_name):
    fmt = get_format(fmt_name)
    m = fmt.mantissa_bits
    xs = float(fmt.decode(fmt.encode(np.float64(x))))  # the stored value
    e = math.frexp(abs(xs))[1] - 1  # unbiased exponent of a normal value: 2^e <= |xs| < 2^(e+1)
    for b in range(fmt.nbits - 1):
        new = flip_value(xs, b, fmt)
        if b < m:  # mantissa: exactly +- 2^(b-m) * 2^e
            assert abs(new - xs) == 2.0 ** (b - m + e), (fmt_name, x, b)
        elif math.isfinite(new) and new != 0 and fmt.classify(fmt.encode(np.float64(new))) == "normal":
            ratio = abs(new / xs)  # exponent: a factor 2^(+-2^(b-m)), exactly
            assert ratio in (2.0 ** 2 ** (b - m), 2.0 ** -(2 ** (b - m))), (fmt_name, x, b, ratio)
    assert flip_value(xs, fmt.nbits - 1, fmt) == -xs


for name in ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"):
    for x in (0.1, -0.75, 1.0, 3.0):
        check_flip_rules(x, name)
print("mantissa, exponent and sign rules hold for every bit of 0.1, -0.75, 1 and 3 in five formats")

# %% [markdown]
# A picture says it faster. Below, each bar is the relative error $|x' - x| / |x|$ after flipping one
# bit of a stored 0.1, on a log scale, for four formats. Notice the exponent's top bit (bit 30 of
# float32, bit 14 of bfloat16: the same eight exponent bits, at the top of a shorter word): one flip
# turns a weight of 0.1 into $3.4 \cdot 10^{37}$. A network multiplying activations by that weight is
# finished.

# %% figure="flip_magnitudes"
fig, axes = plt.subplots(2, 2, figsize=(10, 6.2), sharey=True)
for ax, name in zip(axes.flat, ("float32", "bfloat16", "float16", "float8_e4m3fn"), strict=True):
    t = flip_table(0.1, name)
    bits = np.array([r.bit for r in t.rows])
    err = np.array([abs(r.value - t.value) / abs(t.value) for r in t.rows])
    colors = [FIELD_COLORS[r.field] for r in t.rows]
    ax.bar(bits, np.log10(err) + 10, bottom=-10, color=colors, width=0.8)
    ax.set_xlim(t.nbits - 0.5, -0.5)  # most significant bit on the left, as the word is written
    ax.set_title(f"0.1 in {name} (stored as {t.value:.4g})", fontsize=10)
    ax.set_xlabel("bit flipped (0 = least significant)")
    ax.axhline(0, color="black", lw=0.6)
for ax in axes[:, 0]:
    ax.set_ylabel("log$_{10}$ relative error")
handles = [plt.Rectangle((0, 0), 1, 1, color=FIELD_COLORS[k]) for k in ("sign", "exponent", "mantissa")]
fig.suptitle("What one bit flip does to the weight 0.1", fontsize=12)
fig.tight_layout(rect=(0, 0, 1, 0.93))
fig.legend(handles, ["sign", "exponent", "mantissa"], loc="upper center", bbox_to_anchor=(0.5, 0.955),
           ncol=3, frameon=False, fontsize=9)
plt.show()

# %% [markdown]
# bfloat16 is as fragile as float32 (same exponent), float16's exponent tops out at
# $2^{16}$ so the worst flip is "only" $6.5 \cdot 10^4$ times, and FP8 `e4m3fn` has so few mantissa bits
# that even the mantissa flips are 8-30 % errors. Where the exponent's top bit sits, per format:

# %%
rows = []
for name in ("float32", "bfloat16", "float16", "float8_e4m3fn"):
    fmt = get_format(name)
    msb = fmt.fields["exponent"].msb
    rows.append([name, fmt.nbits, msb, f"{flip_value(0.1, msb, fmt):.4g}"])
print_table(["format", "bits", "exponent MSB", "0.1 after flipping it"], rows)
assert [r[2] for r in rows] == [30, 14, 14, 6]  # float32: 31 - 1; the 16-bit formats: 15 - 1; FP8: 7 - 1
assert flip_value(0.1, 14, "bfloat16") > 1e37 and flip_value(0.1, 30, "float32") > 1e37

# %% [markdown]
# ## 3. The special values
#
# The exponent field's two extreme values are reserved:
#
# | exponent field | mantissa | meaning |
# |---|---|---|
# | all zeros | 0 | $\pm 0$ (two zeros: `+0` and `-0`) |
# | all zeros | $\neq 0$ | *subnormal*: $(-1)^s \cdot \frac{f}{2^m} \cdot 2^{1-\text{bias}}$ (no leading 1) |
# | all ones | 0 | $\pm\infty$ |
# | all ones | $\neq 0$ | NaN ("not a number") |
#
# float16 has only 65,536 words, so we can classify all of them, and check our decoder against NumPy's
# own float16 on every single one.

# %%
fp16 = get_format("float16")
words = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
values = fp16.decode(words)
classes = fp16.classify(words)
kinds, counts = np.unique(classes, return_counts=True)
print_table(["class", "words"], list(zip(kinds, counts, strict=True)))

# independent reference: NumPy reinterprets the same 16 bits as its own float16
numpy_values = words.view(np.float16)
assert np.array_equal(values, numpy_values, equal_nan=True)
assert np.array_equal(np.signbit(values), np.signbit(numpy_values))  # -0 is kept
# NaN: exponent all ones, mantissa not zero, either sign: 2 * (2^10 - 1) words; inf: exactly 2
assert dict(zip(kinds, counts, strict=True)) == {"nan": 2046, "inf": 2, "zero": 2, "subnormal": 2046,
                                                 "normal": 2 * 30 * 1024}

# %% [markdown]
# Some behaviours worth seeing once:

# %%
minus_zero = flip_value(0.0, 15, "float16")  # flipping the sign of +0
with np.errstate(divide="ignore"):
    print("sign flip of +0 gives", minus_zero, "; equal to 0?", minus_zero == 0.0,
          "; but 1/x =", np.float16(1) / np.float16(minus_zero))
tiny = fp16.min_subnormal
print("smallest float16 subnormal:", tiny, "= 2^-24; half of it rounds (to even) to",
      float(fp16.decode(fp16.encode(np.float64(tiny / 2)))))
nan = float(fp16.decode(np.array(0x7E00, dtype=np.uint16)))
print("NaN == NaN?", nan == nan, "; NaN compared with anything is False, and NaN * 0 =", nan * 0)
print("1.0 in float32 with bit 30 flipped:", flip_value(1.0, 30, "float32"))
print("1.5 in float32 with bit 30 flipped:", flip_value(1.5, 30, "float32"))

assert math.copysign(1, minus_zero) == -1 and minus_zero == 0
assert math.isinf(flip_value(1.0, 30, "float32")) and math.isnan(flip_value(1.5, 30, "float32"))

# %% [markdown]
# The last two lines are the heart of the matter. 1.0 is stored with exponent `01111111`: one flip of
# the top exponent bit makes it all ones, and the value becomes `inf` (mantissa 0) or, for 1.5, `NaN`
# (mantissa not 0). A single `inf` weight turns a whole layer's output into `inf`/`NaN`.
#
# ### FP8 e4m3fn: no infinity
#
# `e4m3fn` ("finite") spends the all-ones exponent on ordinary numbers, up to 448, and keeps a single
# NaN pattern per sign, `S.1111.111`. The picture below shows every positive value of both FP8 formats
# on a log scale: each binade (a power-of-two interval) holds the same number of values, and the
# subnormals fill the gap towards 0 with evenly spaced ones.

# %%
fig, ax = plt.subplots(figsize=(10, 2.4))
for row, name in enumerate(("float8_e4m3fn", "float8_e5m2")):
    fmt = get_format(name)
    w8 = np.arange(128, dtype=np.uint8)  # sign bit 0: the non-negative half
    v8, c8 = fmt.decode(w8), fmt.classify(w8)
    for kind, color in (("subnormal", "tab:orange"), ("normal", "tab:blue")):
        sel = c8 == kind
        ax.plot(v8[sel], np.full(sel.sum(), row), "|", ms=18, color=color, label=kind if row == 0 else None)
    print(f"{name}: {np.sum(c8 == 'normal')} normal, {np.sum(c8 == 'subnormal')} subnormal, "
          f"{np.sum(c8 == 'inf')} inf, {np.sum(c8 == 'nan')} NaN among the 128 words with sign 0; "
          f"max {np.nanmax(np.where(np.isinf(v8), np.nan, v8))}")
ax.set_xscale("log")
ax.set_yticks([0, 1], ["e4m3fn", "e5m2"])
ax.set_ylim(-0.6, 1.6)
ax.set_xlabel("value")
ax.legend(loc="lower right", ncol=2, fontsize=8)
ax.set_title("Every positive FP8 value", fontsize=10)
fig.tight_layout()
plt.show()

e4m3 = get_format("float8_e4m3fn")
assert e4m3.max_finite == 448 and np.sum(e4m3.classify(np.arange(256, dtype=np.uint8)) == "nan") == 2

# %% [markdown]
# ## 4. How likely is a value to become non-finite?
#
# Suppose each stored bit flips independently with probability $p$ (the *bit-error rate*). A value
# stored in a format with infinities reads back non-finite exactly when its exponent field ends up all
# ones. The sign and mantissa do not matter. If the stored exponent has $z$ zero bits out of $E$, all $z$
# must flip and the other $E - z$ must not:
#
# $$P(\text{non-finite}) = p^{\,z} (1 - p)^{E - z}.$$
#
# So a value whose exponent is *almost* all ones is in danger: float32 1.0 (`01111111`, $z = 1$) needs
# one flip, 0.1 (`01111011`) needs two, and $10^{-6}$ (`01101011`) needs three. `prob_nonfinite`
# computes this for any value and format (and splits it into `inf` and `NaN` with `kind=`).

# %%
p = 1e-3
for x in (1.0, 1.5, 0.1, 2.0, 1e-6):
    code_x = int(fp32.encode(np.float32(x)))
    print(f"x = {x:<6}  exponent {bit_string(code_x, fp32).split()[1]}   "
          f"P(non-finite) = {prob_nonfinite(x, 'float32', p):.3e}   P(inf) = "
          f"{prob_nonfinite(x, 'float32', p, kind='inf'):.3e}")
assert prob_nonfinite(1.0, "float32", p) == p * (1 - p) ** 7
assert prob_nonfinite(0.1, "float32", p) == p**2 * (1 - p) ** 6

# %% [markdown]
# As a function of the value this is a staircase: $z$ is constant across a binade (a power-of-two
# interval) and jumps at powers of two. In all three formats the binade $[1, 2)$, exponent `0111...1`,
# is one flip away from non-finite, and so are the large binades whose exponent has a single zero bit.
# bfloat16 has float32's exponent, so its staircase is float32's.

# %% figure="nonfinite_probability"
xs = np.logspace(-8, 4.8, 4000)  # float16's largest finite value is 65504
fig, ax = plt.subplots(figsize=(8.5, 4))
for name, style in (("float32", "-"), ("bfloat16", "--"), ("float16", "-")):
    fmt = get_format(name)
    ax.plot(xs, prob_nonfinite(xs, fmt, p), style, label=name, lw=1.6 if name != "bfloat16" else 2.4)
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("stored value $x$")
ax.set_ylabel(f"P(reads back inf or NaN) at p = {p:g}")
ax.set_title("Exact probability that one stored value becomes non-finite", fontsize=11)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Checking the formula, two ways
#
# Exact formulas deserve an independent check, and a check is only worth something if it can fail.
#
# **By enumeration.** A float16 word has only $2^{16}$ possible error patterns $F$ (the set of bits that
# flip), and pattern $F$ occurs with probability $p^{|F|} (1-p)^{16-|F|}$. Adding up the probabilities
# of the patterns that leave the word non-finite gives the answer with no formula at all: only XOR,
# NumPy's own float16 decoder, and a correctly rounded sum (`math.fsum`). It must agree with
# `prob_nonfinite` to rounding (relative $10^{-12}$), including the probabilities far too small to ever
# observe, such as $P(\text{inf})$ of 0.1, which needs nine particular bits to flip.

# %%
p_ex = 1e-3
patterns = np.arange(2**16, dtype=np.uint32).astype(np.uint16)  # every set of flipped bits
n_flipped = np.array([bin(f).count("1") for f in range(2**16)])
pattern_prob = p_ex**n_flipped * (1 - p_ex) ** (16 - n_flipped)
assert math.isclose(math.fsum(pattern_prob), 1.0, rel_tol=1e-12)  # the patterns cover every outcome
rows = []
for x in (1.0, 1.5, 0.1, -3.0, 40000.0, 6e-5, 0.0, 65504.0):
    read_back = (fp16.encode(np.float64(x)) ^ patterns).view(np.float16)  # every possible read-back
    row = [x, bit_string(fp16.encode(np.float64(x)), fp16).split()[1]]
    for kind, bad in (("nonfinite", ~np.isfinite(read_back)), ("inf", np.isinf(read_back)),
                      ("nan", np.isnan(read_back))):
        by_enumeration = math.fsum(pattern_prob[bad])
        formula = prob_nonfinite(x, fp16, p_ex, kind=kind)
        assert math.isclose(formula, by_enumeration, rel_tol=1e-12), (x, kind, formula, by_enumeration)
        row.append(f"{formula:.3e}")
    rows.append(row)
print(f"p = {p_ex:g}: prob_nonfinite == sum over all 2^16 flip patterns, for every value and kind")
print_table(["x", "exponent", "P(non-finite)", "P(inf)", "P(NaN)"], rows)

# %% [markdown]
# **By Monte Carlo.** Enumeration trusts our reading of the fault model (each bit independently); a
# simulation with `inject_bit_errors`, which knows nothing about exponents, checks that reading too. We
# store many copies of a value, flip bits at random, decode, and count the non-finite results. The
# count is binomial, so its 99.9 % Wilson interval must contain the exact probability. That can only
# fail if the event is frequent enough to be counted: with an expected count of $10^{-7}$ the count is
# 0 and *every* small probability passes. So we use float16, a high rate $p = 0.02$, 200,000 copies,
# and assert only where at least 50 events are expected (the interval is then at most about $\pm 47\%$
# of the count wide, so a formula off by a factor 2, let alone by a factor $p$, fails). The rare events were
# checked by enumeration above.

# %%
p_mc, n_copies, min_expected = 0.02, 200_000, 50
rng = np.random.default_rng(0)
rows, checked = [], 0
for x in (1.0, 1.5, 0.1, 0.75, 40000.0):
    stored = fp16.encode(np.float64(x))
    hit = fp16.decode(inject_bit_errors(np.full(n_copies, stored, dtype=np.uint16), p_mc, rng=rng))
    for kind, measured in (("nonfinite", ~np.isfinite(hit)), ("inf", np.isinf(hit)), ("nan", np.isnan(hit))):
        k = int(measured.sum())
        exact = prob_nonfinite(x, fp16, p_mc, kind=kind)
        low, high = wilson_interval(k, n_copies, confidence=0.999)
        if exact * n_copies >= min_expected:
            assert low <= exact <= high, (x, kind, k, exact, low, high)
            checked += 1
            verdict = "inside"
        else:
            verdict = f"not tested: {exact * n_copies:.2g} expected"
        rows.append([x, kind, f"{exact * n_copies:.4g}", k, f"[{low * n_copies:.0f}, {high * n_copies:.0f}]",
                     verdict])
print_table(["x", "event", "expected count", "measured", "99.9% interval", "exact value is"], rows)
print(f"{checked} exact probabilities tested by Monte Carlo, each inside its interval")
assert checked >= 8

# %% [markdown]
# ### How many words are hit at all?
#
# The chance that a word of $n_b$ bits suffers at least one flip is $1 - (1 - p)^{n_b}$, so among $n$
# words `expected_corrupted(n, nb, p)` $= n (1 - (1-p)^{n_b})$ are hit. A float32 ResNet-18 (11.7 M weights)
# at $p = 10^{-6}$ has about 374 corrupted weights. We check the formula by simulation too.

# %%
n_words, rate = 100_000, 1e-3
clean = np.zeros(n_words, dtype=np.uint32)
hit = inject_bit_errors(clean, rate, rng=1)
k = int(np.count_nonzero(hit != clean))
low, high = wilson_interval(k, n_words, confidence=0.999)
expected = expected_corrupted(n_words, 32, rate)
print(f"expected {expected:.1f} corrupted words, measured {k}, 99.9% interval for the count "
      f"[{low * n_words:.1f}, {high * n_words:.1f}]")
assert low * n_words <= expected <= high * n_words
print(f"ResNet-18 in float32 at p = 1e-6: {expected_corrupted(11_689_512, 32, 1e-6):.0f} weights hit")

# %% [markdown]
# ## Exercises
#
# Each exercise has a **TODO** cell for your answer, a folded **solution** cell (click the `...` to
# unfold it; try first), and a **check** cell that tests your answer against an independent computation.
# While a TODO still says `None`, the check tests the worked solution, so the notebook always runs
# from top to bottom.
#
# **Exercise 1.** What does flipping bit 30 do to 2.0 stored in float32? Predict it from the bits
# before you compute anything.

# %%
# TODO: the float32 value of 2.0 after flipping bit 30, as a number (for example answer_1 = 4.0).
# Hint: bit_string(fp32.encode(np.float32(2.0)), fp32) shows the word.
answer_1 = None

# %% jupyter={"source_hidden": true}
# Solution. 2.0 = (1 + 0) * 2^1 has exponent field 1 + 127 = 128 = 10000000. Bit 30 is the exponent's
# top bit: the field becomes 00000000 and the mantissa is 0, so the result is +0: the weight vanishes.
print("2.0 bits:", bit_string(int(fp32.encode(np.float32(2.0))), fp32))
print("after flipping bit 30:", flip_value(2.0, 30, "float32"))
solution_1 = 0.0


# %%
def test_1(value):
    # the reference: NumPy's own float32 bit pattern, XOR, and NumPy's decoding
    truth = float((np.float32(2.0).view(np.uint32) ^ np.uint32(1 << 30)).view(np.float32))
    same_sign = math.copysign(1, value) == math.copysign(1, truth)  # +0 and -0 are different answers
    assert value == truth and same_sign, f"{value!r} is not {truth!r}"


check(test_1, answer_1, solution_1)

# %% [markdown]
# **Exercise 2.** Among float16 values in $[0.5, 4)$, which binade $[a, b)$ is the most likely to
# become non-finite at $p = 10^{-3}$, and how many times more likely is it than 0.6?

# %%
# TODO: (a, b, ratio), for example answer_2 = (0.5, 1.0, 10.0)
answer_2 = None

# %% jupyter={"source_hidden": true}
# Solution. The float16 exponent fields are 01110 on [0.5, 1), 01111 on [1, 2) and 10000 on [2, 4):
# z = 2, 1 and 4 zero bits. [1, 2) needs a single flip, 0.6 needs two: P = p (1-p)^4 against
# p^2 (1-p)^3, a ratio of (1 - p) / p = 999.
grid = np.linspace(0.5, 4, 701)[:-1]
probs = prob_nonfinite(grid, "float16", 1e-3)
worst = grid[probs == probs.max()]
print(f"most exposed: [{worst.min()}, {worst.max()}]; P = {probs.max():.3e}")
solution_2 = (1.0, 2.0, (1 - 1e-3) / 1e-3)


# %%
def test_2(answer):
    a, b, ratio = answer
    assert (a, b) == (1.0, 2.0), f"[{a}, {b}) is not the most exposed binade"
    # the reference: enumeration over all 2^16 flip patterns, as in Section 4 (NumPy decodes)
    def by_enumeration(x):
        read_back = (np.float16(x).view(np.uint16) ^ patterns).view(np.float16)
        return math.fsum(pattern_prob[~np.isfinite(read_back)])
    assert all(by_enumeration(v) < by_enumeration(1.0) for v in (0.5, 0.75, 2.0, 3.0))
    truth = by_enumeration(1.0) / by_enumeration(0.6)
    assert math.isclose(ratio, truth, rel_tol=0.01), f"ratio {ratio} is not {truth:.1f}"


check(test_2, answer_2, solution_2)

# %% [markdown]
# **Exercise 3.** A layer's float32 weights are roughly normal with standard deviation 0.05 (the
# million weights below). At $p = 10^{-5}$, how many of them do you expect to become non-finite? Which
# weights contribute most?

# %%
weights = (np.random.default_rng(2).standard_normal(1_000_000) * 0.05).astype(np.float32)
# TODO: the expected number of non-finite weights among these (a float)
answer_3 = None

# %% jupyter={"source_hidden": true}
# Solution. The expected count is the sum of the per-weight probabilities (linearity of expectation).
# Each weight contributes p^z (1-p)^(8-z), so what matters is z, the number of zero bits of its
# exponent field, not its size: group the weights by exponent field.
pw = prob_nonfinite(weights, "float32", 1e-5)
print(f"expected non-finite weights among 10^6: {pw.sum():.2e}")
exponents = fp32.fields["exponent"].extract(fp32.encode(weights)).astype(np.int64)
rows = []
for field in np.unique(exponents):
    sel = exponents == field
    zeros = 8 - bin(field).count("1")
    rows.append((pw[sel].sum() / pw.sum(), field, zeros, sel.sum()))
rows.sort(reverse=True)
print_table(["share", "exponent", "binade of |w|", "zero bits", "weights"],
            [[f"{share:.3f}", format(field, "08b"), f"[2^{field - 127}, 2^{field - 126})", zeros, count]
             for share, field, zeros, count in rows[:5]])
# The binades with only two zero bits (01111011: [1/16, 1/8); 01110111: [1/256, 1/128); ...) carry
# almost all of the risk; the much more numerous weights in between need three flips or more.
two_zero = sum(share for share, _, zeros, _ in rows if zeros <= 2)
assert two_zero > 0.99, two_zero
solution_3 = float(pw.sum())


# %%
def test_3(expected_count):
    # the reference: the exponent bits straight from NumPy's float32 pattern, and the formula of Section 4
    exponent = (weights.view(np.uint32) >> 23) & 0xFF
    zeros = 8 - np.array([bin(e).count("1") for e in range(256)])[exponent]
    truth = math.fsum(1e-5**zeros * (1 - 1e-5) ** (8 - zeros))
    assert math.isclose(expected_count, truth, rel_tol=1e-3), f"{expected_count} is not {truth:.4g}"


check(test_3, answer_3, solution_3)

# %% [markdown]
# ## Summary
#
# * A float is sign, exponent and mantissa; bfloat16 / float16 / FP8 trade exponent bits for mantissa
#   bits. Fixed point has no exponent: every word is a finite number.
# * A mantissa flip is a small error, an exponent flip multiplies or divides by $2^{2^k}$, and a single
#   flip can turn a weight into `inf` or `NaN`.
# * The probability of that is exact and simple, $p^z (1-p)^{E-z}$; enumerating every flip pattern
#   agrees to rounding, and Monte Carlo agrees wherever the event is frequent enough to count.
#
# Next: [2. Quantization and bit errors](02_quantization_and_bit_errors.ipynb), where the exponent
# disappears and the damage of a flip becomes bounded.
