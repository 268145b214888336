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
# # 2. Quantization and bit errors
#
# In [notebook 1](01_anatomy_of_a_float.ipynb) one flipped exponent bit turned the weight 0.1 into
# $3.4 \cdot 10^{37}$. Fixed-point numbers have no exponent: every bit pattern is an ordinary number in a
# known range, so the damage of any flip is bounded. This notebook measures that bound and what shapes it.
#
# **Learning goals.** After this notebook you can
#
# 1. encode and decode `q2.5` fixed point and a per-tensor quantizer (symmetric and asymmetric ranges,
#    two's complement and offset binary codes), and bound their rounding error;
# 2. state exactly what flipping bit $j$ of an $m$-bit code costs ($2^j$ quantization steps), and bound
#    what any number of flips in one word can cost ($2L$ steps, twice the range);
# 3. explain why *offset binary* and *two's complement* cost the same under random bit flips, and what
#    the choice does change when faults prefer one direction;
# 4. explain why *clipping* the weights before quantizing makes every flip cheaper, and find the clip that
#    balances clipping error against bit-error damage;
# 5. read error histograms of float32 and quantized weights under the same bit-error rate.

# %%
import matplotlib.pyplot as plt
import numpy as np

from saf_ref.bits import Quantizer, expected_corrupted, flip_value, get_format, inject_bit_errors
from saf_ref.experiments.stats import wilson_interval

plt.rcParams.update({"figure.dpi": 110, "figure.facecolor": "white", "axes.grid": True, "grid.alpha": 0.3})


def bits8(code):
    """An 8-bit code as a bit string, bit 7 on the left."""
    return format(int(code), "08b")


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
# ## 1. Fixed point: `q2.5`
#
# `q2.5` stores the integer $k = \mathrm{round}(x \cdot 2^5)$ as an 8-bit two's complement word: 1 sign
# bit, 2 integer bits, 5 fraction bits. It represents $k / 32$ for $k \in [-128, 127]$, i.e.
# $[-4, 3.96875]$ in steps of $1/32$. Values outside are *saturated* to the nearest end; values inside
# are rounded to the nearest step (ties to even).

# %%
q25 = get_format("q2.5")
xs = np.array([0.1, 1.375, 3.2, -0.015625, 5.0, -4.2], dtype=np.float32)
codes = q25.encode(xs)
decoded = q25.decode(codes)
print_table(["x", "code", "bits", "decoded", "error"],
            [[f"{x:g}", f"0x{int(c):02X}", bits8(c), f"{d:g}", f"{d - x:+.4f}"]
             for x, c, d in zip(xs, codes, decoded, strict=True)])
inside = np.abs(xs) <= 4
assert np.all(np.abs(decoded[inside] - xs[inside]) <= q25.step / 2)  # rounding: at most half a step
assert decoded[4] == q25.max_value and decoded[5] == q25.min_value  # saturation

# %% [markdown]
# ### What a flip costs in fixed point
#
# The word holds $k$ in two's complement: $k = -2^7 b_7 + \sum_{j<7} 2^j b_j$. Flipping bit $j < 7$ adds or
# subtracts $2^j$ to $k$, i.e. $\pm 2^{j-5}$ to the value; flipping the sign bit adds or subtracts
# $2^7 / 2^5 = 4$. *Whatever* the value, no flip costs more than 4. We check this on all
# $256 \times 8$ (word, bit) pairs.

# %%
all_codes = np.arange(256, dtype=np.uint8)
values = q25.decode(all_codes).astype(np.float64)
for bit in range(8):
    change = q25.decode(all_codes ^ np.uint8(1 << bit)).astype(np.float64) - values
    cost = 4.0 if bit == 7 else 2.0 ** (bit - 5)
    assert np.all(np.abs(change) == cost), bit
    print(f"bit {bit}: every flip changes the value by exactly +-{cost:g}")
print("float32, for comparison: flipping bit 30 of 0.1 gives", flip_value(0.1, 30, "float32"))

# %% [markdown]
# The price of `q2.5` is resolution: a step of $1/32 \approx 0.03$ is coarse for weights of size 0.05,
# and the range $[-4, 4)$ is mostly wasted on them. Per-tensor quantizers fix both by choosing the
# range from the tensor itself.

# %% [markdown]
# ## 2. Per-tensor quantizers
#
# A `Quantizer` (the scheme of Stutz et al., *Bit error robustness for energy-efficient DNN
# accelerators*) stores $m$-bit integer *levels* $k \in [-L, L]$, $L = 2^{m-1} - 1$, plus a small
# *context* (the range and the step) kept apart from the codes:
#
# * **symmetric**: range $[-q, q]$ with $q = \max |w|$ (or a fixed `max_abs`, or capped by `clip`);
#   step $\Delta = q / L$; $k = \mathrm{round}(w / \Delta)$;
# * **asymmetric**: the tensor's own $[\min, \max]$ is mapped onto $[-1, 1]$ first, so a tensor that is
#   not centred on zero still uses all levels.
#
# Our "layer" is 100,000 weights, roughly normal with standard deviation 0.05, plus 100 large outliers
# (weights of magnitude 0.4-0.6, as training without any constraint tends to produce).

# %%
rng = np.random.default_rng(0)
n = 100_000
w = rng.standard_normal(n).astype(np.float32) * np.float32(0.05)
outliers = rng.choice(n, 100, replace=False)
w[outliers] = rng.choice([-1, 1], 100).astype(np.float32) * rng.uniform(0.4, 0.6, 100).astype(np.float32)

quant = Quantizer(8, scheme="symmetric")
codes, ctx = quant.encode(w)
w_q = quant.decode(codes, ctx)
print(ctx)
print(f"q = max|w| = {ctx.q:.4f}, step = q / 127 = {ctx.step:.6f}")

# Independent check in float64: the levels are round(w / step), clipped to [-127, 127], and the
# rounding error is at most half a step. The quantizer computes w / step in float32 (as the published
# code does), so a weight within float32 rounding of a tie (level + 1/2) may round the other way.
ratio = w.astype(np.float64) / ctx.step
levels = np.clip(np.rint(ratio), -127, 127)
got = np.rint(w_q.astype(np.float64) / ctx.step)
near_tie = np.abs(np.abs(ratio - np.trunc(ratio)) - 0.5) < 1e-5
assert np.all((got == levels) | near_tie)
print(f"{np.sum(got != levels)} of {n} levels differ from float64 rounding, each at a near-tie")
assert np.max(np.abs(w_q - w)) <= ctx.step / 2 * (1 + 1e-4)
print(f"largest rounding error {np.max(np.abs(w_q - w)):.4e}; half a step is {ctx.step / 2:.4e}")

# %% [markdown]
# ## 3. What a flip costs in a quantizer
#
# A flip of bit $j$ moves the level by $\pm 2^j$, so the value by $\pm 2^j \Delta$. The top bit costs
# $2^{m-1} \Delta \approx q$: at most about the largest weight of the tensor, never $10^{37}$. (The one
# exception is the level $-2^{m-1}$, one past $-L$, which the decoder clamps to $-q$; a flip that lands
# there costs one step less.) Checked on every code and bit:

# %%
ladder = quant.decode(all_codes, ctx).astype(np.float64)  # the value of each of the 256 codes
for bit in range(8):
    change = np.abs(quant.decode(all_codes ^ np.uint8(1 << bit), ctx).astype(np.float64) - ladder)
    full = 2.0**bit * ctx.step
    # exactly 2^j steps, except a flip into or out of the clamped level (one step less)
    ok = np.isclose(change, full, rtol=1e-5) | np.isclose(change, full - ctx.step, rtol=1e-5)
    assert ok.all(), bit
print(f"worst single flip: {2**7 * ctx.step:.4f} (= 128 steps), the largest weight is {np.abs(w).max():.4f}")

# %% [markdown]
# ### Several flips in one word
#
# $2^7$ steps bounds a *single* flip, not the error of a word: flips in one word add up. This quantizer
# stores the level $k$ as the unsigned word $k + 128$ (offset binary, Section 4), so the level 5 is
# `10000101`. Flip its bits 7 and 2: the word becomes `00000001`, the level $-127$, an error of
# $132$ steps. The true bound comes from the range, not from the bits: every code decodes to a level
# in $[-L, L]$, so no set of flips can move a value by more than $2L = 254$ steps, which is $2q$, twice
# the largest weight; and the bound is reached (127 to $-127$). All $256 \times 256$ (code, flip
# pattern) pairs, grouped by the number of flipped bits:

# %%
patterns = all_codes  # a flip pattern is any 8-bit mask
n_flipped = np.array([bin(f).count("1") for f in range(256)])
steps = np.rint(np.abs(ladder[all_codes[:, None] ^ patterns[None, :]] - ladder[:, None]) / ctx.step)
worst_by_count = [int(steps[:, n_flipped == k].max()) for k in range(1, 9)]
print_table(["bits flipped in the word"] + list(range(1, 9)), [["worst error (steps)"] + worst_by_count])
level5 = np.uint8(5 + 128)
assert quant.code == "offset_binary" and np.rint(ladder[level5] / ctx.step) == 5  # 10000101 is the level 5
print(f"level 5 with bits 7 and 2 flipped: {bits8(level5)} -> {bits8(level5 ^ np.uint8(0x84))}, "
      f"{steps[level5, 0x84]:.0f} steps")
assert worst_by_count[0] == 128 and steps[level5, 0x84] == 132  # one flip: 2^7; two flips: already more
assert steps.max() == 2 * 127 == max(worst_by_count)  # any flips: 2L steps, never more

# %% [markdown]
# ## 4. Offset binary or two's complement?
#
# A level $k$ can be stored in two ways:
#
# * **two's complement**: the 8-bit pattern of $k$ ($-1$ is `11111111`);
# * **offset binary**: the unsigned number $u = k + 128$ ($-1$ is `01111111`).
#
# Since adding 128 modulo 256 only toggles the top bit, the offset-binary word *is* the two's complement
# word with bit 7 flipped: $u = c \oplus 2^7$. Look at the levels around zero:

# %%
tc = Quantizer(8, scheme="symmetric", code="twos_complement")
ob = Quantizer(8, scheme="symmetric", code="offset_binary")
c_tc, ctx_tc = tc.encode(w)
c_ob, ctx_ob = ob.encode(w)
print_table(["level k", "two's complement", "offset binary"],
            [[k, bits8(k & 0xFF), bits8(k + 128)] for k in (-3, -2, -1, 0, 1, 2, 3)])
# The two encoders agree up to that top bit on all weights but a near-tie or two: offset binary adds 128
# in float32 *before* rounding, which can break a tie the other way (the published code does the same).
differ = (c_tc ^ np.uint8(0x80)) != c_ob
print(f"encoders differ (by one level, at a near-tie) on {differ.sum()} of {n} weights")
level_tc = c_tc.view(np.int8).astype(np.int64)
level_ob = c_ob.astype(np.int64) - 128
assert differ.sum() <= 5 and np.all(np.abs(level_tc - level_ob)[differ] == 1)
# %% [markdown]
# A consequence that surprises many: under *random independent bit flips* the choice makes **no
# difference at all**. XOR is commutative: flipping a set of bits $F$ gives
# $u \oplus F = (c \oplus F) \oplus 2^7$, which decodes to exactly the same level. Same levels, same
# flips, same damage, bit for bit:

# %%
flips = inject_bit_errors(np.zeros(n, dtype=np.uint8), 0.01, rng=1)  # one random flip pattern
hit_tc = tc.decode(c_tc ^ flips, ctx_tc)
hit_ob = ob.decode((c_tc ^ np.uint8(0x80)) ^ flips, ctx_ob)  # the same levels, stored in offset binary
assert np.array_equal(hit_tc, hit_ob)
print(f"{np.count_nonzero(flips)} weights hit; decoded values identical under both codes")

# %% [markdown]
# What the code *does* change is which bits are 1, and so which weights suffer when faults prefer one
# direction (in many memories one direction dominates: a cell that loses its charge, say, reads $1$ as
# $0$, while a $0$ stays $0$). In two's
# complement the small negative weights are full of ones (`1111111x`) and the small positive ones full of
# zeros; in offset binary both signs carry about half ones. With only $1 \to 0$ flips:

# %%
rows = []
for name, q8, c8, ctx8 in (("two's complement", tc, c_tc, ctx_tc), ("offset binary", ob, c_ob, ctx_ob)):
    clean8 = q8.decode(c8, ctx8)
    for direction, rates in (("1 -> 0", {"p01": 0.0, "p10": 0.01}), ("0 -> 1", {"p01": 0.01, "p10": 0.0})):
        err = np.abs(q8.decode(inject_bit_errors(c8, rng=2, **rates), ctx8) - clean8)
        rows.append([name, direction, f"{err[w < 0].mean():.2e}", f"{err[w > 0].mean():.2e}",
                     f"{err.mean():.2e}"])
print_table(["code", "faults", "mean |error|, w < 0", "mean |error|, w > 0", "all"], rows)

# two's complement with 1 -> 0 faults: the negative weights take nearly all the damage ...
neg, pos = float(rows[0][2]), float(rows[0][3])
assert neg > 4 * pos
# ... offset binary spreads it over both signs (within a factor 2), for about the same total
neg, pos = float(rows[2][2]), float(rows[2][3])
assert 0.5 < neg / pos < 2
assert 0.8 < float(rows[0][4]) / float(rows[2][4]) < 1.25

# %% [markdown]
# So the representation decides *who* pays under one-directional faults, not *how much* is lost in
# total; under symmetric random flips it is irrelevant. The quantity that really sets the cost of a
# flip is the step $\Delta$, which is where clipping comes in.
#
# ## 5. Clipping: make every flip cheaper
#
# The step is $\Delta = q / L$ and $q$ is the *largest* weight. Our 100 outliers (0.1 % of the layer)
# make $q \approx 0.6$ although 99.9 % of the weights are below 0.25. Clipping the weights to
# $[-c, c]$ before quantizing shrinks the step, and with it the cost of *every* flip, by $q / c$; the
# price is the clipping error on the outliers. (Trained *with* clipping, the network learns to live with
# small weights, so that price mostly disappears: see notebook 5.)
#
# The expected damage can be computed exactly. A word of 8 bits suffers the flip pattern $F$ with
# probability $p^{|F|} (1-p)^{8-|F|}$, so for a code $c$
#
# $$E\,|\text{error}| = \sum_{F} p^{|F|} (1-p)^{8-|F|}\,|\mathrm{dec}(c \oplus F) - \mathrm{dec}(c)|,$$
#
# 256 patterns times 256 codes: a small table.

# %%
MASKS = np.arange(256, dtype=np.uint8)
POPCOUNT = np.array([bin(m).count("1") for m in range(256)])


def expected_flip_error(quantizer, codes, context, p):
    """Exact mean over the tensor of E|dec(c XOR F) - dec(c)| for independent flips at rate p."""
    ladder = quantizer.decode(MASKS, context).astype(np.float64)
    damage = np.abs(ladder[MASKS[:, None] ^ MASKS[None, :]] - ladder[:, None])  # [code, pattern]
    per_code = damage @ (p**POPCOUNT * (1 - p) ** (8 - POPCOUNT))
    return per_code[codes].mean()


p = 1e-2
rows, measured = [], {}
for clip in (None, 0.3, 0.15):
    qc = Quantizer(8, scheme="symmetric", clip=clip)
    cc, xc = qc.encode(w)
    clean = qc.decode(cc, xc)
    exact = expected_flip_error(qc, cc, xc, p)
    err = np.abs(qc.decode(inject_bit_errors(cc, p, rng=3), xc) - clean).astype(np.float64)
    se = err.std() / np.sqrt(n)  # Monte Carlo standard error of the mean
    assert abs(err.mean() - exact) < 4 * se, (clip, err.mean(), exact, se)
    measured[clip] = exact
    rows.append(["none" if clip is None else clip, f"{xc.step:.2e}", f"{exact:.2e}", f"{err.mean():.2e}",
                 f"{np.abs(clean - w).mean():.2e}"])
print_table(["clip", "step", "E|flip error| exact", "measured", "mean |quantization + clip error|"], rows)
# the flip damage scales with the step: clipping at c divides it by q / c
q_full = float(np.abs(w).max())
for clip in (0.3, 0.15):
    assert abs(measured[None] / measured[clip] / (q_full / clip) - 1) < 0.02

# %% [markdown]
# ## 6. Error histograms
#
# Finally the whole picture at one bit-error rate, $p = 10^{-3}$, for the same layer stored four ways.
# Each histogram counts the weights that were hit, by the size of their error (log axis). float32
# errors span fifty orders of magnitude (and can include `inf` and `NaN`, for weights near 1). A
# quantized word hit by one flip is off by $2^j \Delta$ (the spikes are the 8 bits); the few words hit
# twice (about $\binom{8}{2} p^2 n \approx 3$ of 100,000 at this rate) can be off by more, up to
# $2L \Delta = 254 \Delta$, never further. Clipping moves the whole distribution left.

# %% figure="error_histograms"
p_hist = 1e-3
stores = {}
fp32 = get_format("float32")
c32 = fp32.encode(w)
stores["float32"] = (fp32.decode(inject_bit_errors(c32, p_hist, rng=4)), w)
fp16 = get_format("float16")
c16 = fp16.encode(w)
stores["float16"] = (fp16.decode(inject_bit_errors(c16, p_hist, rng=4)), fp16.decode(c16))
for label, clip in (("8-bit, no clip", None), ("8-bit, clip 0.15", 0.15)):
    qc = Quantizer(8, scheme="symmetric", clip=clip)
    cc, xc = qc.encode(w)
    stores[label] = (qc.decode(inject_bit_errors(cc, p_hist, rng=4), xc), qc.decode(cc, xc))

bins = np.arange(-12, 40.5, 0.5)  # half a decade per bin
fig, ax = plt.subplots(figsize=(9, 4.2))
any_bad = False
for (label, (hit, clean)), color in zip(stores.items(), ("tab:red", "tab:orange", "tab:blue", "tab:green"),
                                        strict=True):
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(hit.astype(np.float64) - clean.astype(np.float64))
    changed = hit != clean
    finite = err[changed & np.isfinite(err)]
    n_bad = int(np.sum(changed & ~np.isfinite(err)))
    ax.hist(np.log10(finite), bins=bins, histtype="step", lw=1.8, color=color,
            label=f"{label}: {changed.sum()} hit, largest error {finite.max():.2g}"
            + (f", {n_bad} inf/NaN" if n_bad else ""))
    if n_bad:  # non-finite results get a bar of their own at the right
        any_bad = True
        ax.bar(42, n_bad, width=1.0, color=color, alpha=0.6)
ticks = list(range(-12, 41, 4))
ax.set_xticks([*ticks, 42] if any_bad else ticks,
              [f"1e{k}" for k in ticks] + (["inf/NaN"] if any_bad else []))
ax.annotate("float32 exponent's top bit:\na weight of 0.05 becomes ~1e37", xy=(36.5, 45), xytext=(22, 150),
            arrowprops={"arrowstyle": "->"}, fontsize=9)
ax.annotate("8-bit: one flip, at most $2^7$ steps", xy=(-0.3, 205), xytext=(4, 300),
            arrowprops={"arrowstyle": "->"}, fontsize=9)
ax.set_xlabel("|error| of a weight that was hit")
ax.set_ylabel("weights")
ax.set_title(f"100,000 weights, bit-error rate p = {p_hist:g}", fontsize=11)
ax.legend(fontsize=8, loc="upper right")
fig.tight_layout()
plt.show()

# the claims of the picture, as numbers
hit32, clean32 = stores["float32"]
assert np.nanmax(np.abs(hit32[np.isfinite(hit32)] - clean32[np.isfinite(hit32)])) > 1e30
for label, clip in (("8-bit, no clip", None), ("8-bit, clip 0.15", 0.15)):
    hit8, clean8 = stores[label]
    cc, xc = Quantizer(8, scheme="symmetric", clip=clip).encode(w)
    flips_per_word = n_flipped[cc ^ inject_bit_errors(cc, p_hist, rng=4)]  # the same draw as above
    err_steps = np.abs(hit8.astype(np.float64) - clean8) / xc.step
    assert np.all(np.isfinite(hit8)) and err_steps.max() <= 2 * 127 + 1e-3  # never beyond 2L steps
    assert np.all(err_steps[flips_per_word == 1] <= 128 + 1e-3)  # one flip: at most 2^7 steps
    print(f"{label}: {np.sum(flips_per_word >= 2)} words with two or more flips, largest error "
          f"{err_steps.max():.0f} steps")

# %% [markdown]
# ## Exercises
#
# Each exercise has a **TODO** cell for your answer, a folded **solution** cell (click the `...` to
# unfold it; try first), and a **check** cell that tests your answer against an independent computation.
# While a TODO still says `None`, the check tests the worked solution, so the notebook always runs
# from top to bottom.
#
# **Exercise 1.** For a 4-bit symmetric quantizer with a fixed range $q = 1$ (`max_abs=1.0`), what is the
# largest change a single flip can cause, and which codes suffer it?

# %%
# TODO: the largest change of the value (a float), for example answer_1 = 0.5
answer_1 = None

# %% jupyter={"source_hidden": true}
# Solution. L = 2^3 - 1 = 7 levels per side, step 1/7. Bit 3 moves the level by 2^3 = 8 steps = 8/7,
# except from or to the clamped level -8 (decoded as -7 steps = -q), where it is 7 steps = 1. The worst
# flip costs 8/7 of the range q, and every code whose level is not -8 or 0 (which flips to -8) suffers it
# when its bit 3 flips.
q4 = Quantizer(4, scheme="symmetric", max_abs=1.0)
codes4 = np.arange(16, dtype=np.uint8)
_, ctx4 = q4.encode(np.zeros(1, dtype=np.float32))  # a fixed range: the context does not depend on x
v4 = q4.decode(codes4, ctx4).astype(np.float64)
change4 = np.abs(q4.decode(codes4 ^ np.uint8(8), ctx4) - v4)
print(f"step {ctx4.step:.4f}; worst single flip {change4.max():.4f} = {change4.max() / ctx4.step:.0f} steps, "
      f"suffered by codes {[bits8(c)[4:] for c in codes4[np.isclose(change4, change4.max())]]}")
solution_1 = float(change4.max())


# %%
def test_1(worst):
    # the reference, by hand: 4-bit two's complement levels -8..7, -8 read as -7, value = level / 7 (the
    # quantizer stores offset binary; the worst case is the same, Section 4: the codes differ by an XOR)
    def value(code):
        level = code - 16 if code >= 8 else code
        return max(level, -7) / 7
    truth = max(abs(value(c ^ (1 << b)) - value(c)) for c in range(16) for b in range(4))
    assert np.isclose(worst, truth, rtol=1e-6), f"{worst} is not the worst single flip ({truth:.4f})"


check(test_1, answer_1, solution_1)

# %% [markdown]
# **Exercise 2.** At $p = 10^{-2}$, what fraction of the layer's weights is hit at least once when they
# are stored as float32, and as 8-bit codes? Check by simulation.

# %%
# TODO: (fraction for float32, fraction for 8-bit), for example answer_2 = (0.5, 0.5)
answer_2 = None

# %% jupyter={"source_hidden": true}
# Solution. A word of b bits is untouched with probability (1 - p)^b: 1 - 0.99^32 = 27.5 % of float32
# words are hit, 1 - 0.99^8 = 7.7 % of 8-bit words. Fewer bits per weight also means fewer targets.
solution_2 = (1 - 0.99**32, 1 - 0.99**8)
for name, store_codes, fraction in (("float32", c32, solution_2[0]), ("8-bit", codes, solution_2[1])):
    k = int(np.count_nonzero(inject_bit_errors(store_codes, 1e-2, rng=5) != store_codes))
    print(f"{name}: predicted {fraction:.4f}, simulated {k / n:.4f}")


# %%
def test_2(fractions):
    # the reference: a simulation (99.9 % Wilson interval of the hit count) and the library's formula
    for fraction, store_codes, nbits in zip(fractions, (c32, codes), (32, 8), strict=True):
        k = int(np.count_nonzero(inject_bit_errors(store_codes, 1e-2, rng=6) != store_codes))
        low, high = wilson_interval(k, n, confidence=0.999)
        assert low <= fraction <= high, f"{fraction:.4f} is outside the simulated [{low:.4f}, {high:.4f}]"
        assert np.isclose(fraction, expected_corrupted(n, nbits, 1e-2) / n, rtol=1e-3)


check(test_2, answer_2, solution_2)

# %% [markdown]
# **Exercise 3.** Clipping trades clipping error for flip damage. At $p = 10^{-2}$, which clip $c$
# minimises the mean total error $E\,|\mathrm{dec}(\text{flipped}) - w|$ for our layer? The function
# below computes that error exactly (the sum over flip patterns of Section 5, now measured against the
# *original* weight, so that the clipping and rounding errors count too). A 20,000-weight subset with
# the same share of outliers keeps it fast.

# %%
def expected_total_error(quantizer, weights, p):
    """Mean over the weights of E|dec(c_i XOR F) - w_i| for independent flips at rate p (exact)."""
    codes_, context = quantizer.encode(weights)
    ladder = quantizer.decode(MASKS, context).astype(np.float64)
    probs = p**POPCOUNT * (1 - p) ** (8 - POPCOUNT)
    hit_values = ladder[codes_[:, None] ^ MASKS[None, :]]  # every flip pattern of every weight
    return float((np.abs(hit_values - weights[:, None].astype(np.float64)) @ probs).mean())


subset = w[:20_000].copy()
subset[:20] = w[outliers[:20]]  # keep the outlier share (0.1 %) in the subset
# TODO: the clip c (a float) that minimises expected_total_error(Quantizer(8, scheme="symmetric",
# clip=c), subset, 1e-2), to within 5 % of the smallest total error
answer_3 = None

# %% jupyter={"source_hidden": true}
# Solution. Scan c on a grid and take the minimum: too little clipping wastes the step on outliers,
# too much clips ordinary weights, so the best clip is inside the grid.
clips = np.array([0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.45, 0.6])
totals = np.array([expected_total_error(Quantizer(8, scheme="symmetric", clip=c), subset, 1e-2)
                   for c in clips])
best = clips[np.argmin(totals)]
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(clips, totals, "o-")
ax.axvline(best, color="gray", ls="--")
ax.set_xlabel("clip c")
ax.set_ylabel("mean |error| at p = 0.01")
ax.set_title(f"best clip on this grid: {best}", fontsize=10)
fig.tight_layout()
plt.show()
assert clips[0] < best < clips[-1] and totals.min() < 0.5 * totals[-1]
solution_3 = float(best)


# %%
def test_3(clip):
    # the reference: a finer scan than the solution's, by Monte Carlo (independent flips, 20 draws of
    # every weight), which must agree that no clip does more than 5 % better
    def monte_carlo(c):
        qc = Quantizer(8, scheme="symmetric", clip=c)
        cc, xc = qc.encode(subset)
        draws = inject_bit_errors(np.tile(cc, 20), 1e-2, rng=7)
        return float(np.abs(qc.decode(draws, xc).astype(np.float64) - np.tile(subset, 20)).mean())
    fine = np.arange(0.04, 0.31, 0.01)
    best_total = min(monte_carlo(c) for c in fine)
    assert monte_carlo(clip) <= 1.05 * best_total, f"clip {clip} is not within 5 % of the best"


check(test_3, answer_3, solution_3)

# %% [markdown]
# ## Summary
#
# * Fixed point has no exponent, so a flip of bit $j$ costs exactly $2^j$ steps, and any number of flips
#   in one word at most the width of the range ($2L$ steps): bounded, whatever happens.
# * Per-tensor quantizers pick the range from the tensor; the step $\Delta = q / L$ sets the cost of every
#   flip. Clipping shrinks $q$, and the damage with it.
# * Offset binary is two's complement with the top bit flipped: identical under random flips; under
#   one-directional faults it spreads the damage over both signs instead of hitting the negative weights.
#
# Next: [3. A ResNet from scratch](03_resnet_from_scratch.ipynb).
