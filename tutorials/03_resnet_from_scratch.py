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
# # 3. A ResNet from scratch
#
# The networks of the next notebooks are built from three operations: a 2-D convolution, batch
# normalisation and ReLU, assembled into *residual basic blocks*. saf_ref implements each as a pair of
# NumPy functions, `*_forward(...) -> (y, cache)` and `*_backward(dy, cache) -> grads`, with no autograd
# and nothing hidden. This notebook opens them up.
#
# **Learning goals.** After this notebook you can
#
# 1. write a convolution as loops, and as one matrix product (*im2col*), and derive its backward pass;
# 2. compute batch normalisation's forward pass in training and evaluation mode, and its backward pass,
#    including the two terms that come from the batch statistics;
# 3. assemble the ResNet basic block and back-propagate through it, shortcut included;
# 4. check any gradient with central finite differences in float64, and cross-check the numbers
#    against PyTorch.

# %%
import matplotlib.pyplot as plt
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from saf_ref.data import load_digits
from saf_ref.nn import (
    basic_block_backward,
    basic_block_forward,
    batchnorm2d_backward,
    batchnorm2d_forward,
    conv2d_backward,
    conv2d_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    init_resnet,
    relu_forward,
    resnet_backward,
    resnet_forward,
)
from saf_ref.nn.naive import batchnorm2d_naive, conv2d_backward_naive, conv2d_naive
from saf_ref.train import SGD, sgd_init, sgd_step

plt.rcParams.update({"figure.dpi": 110, "figure.facecolor": "white"})
rng = np.random.default_rng(0)
EPS64 = np.finfo(np.float64).eps


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


def central_difference(f, x, index, h=1e-6):
    """(f(x + h e_i) - f(x - h e_i)) / 2h for one entry ``index`` of the array ``x`` (x is not modified)."""
    plus, minus = x.copy(), x.copy()
    plus[index] += h
    minus[index] -= h
    return (f(plus) - f(minus)) / (2 * h)


def relative_error(a, b):
    """|a - b| / max(|a|, |b|, 1e-12), elementwise."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-12)


# %% [markdown]
# Our data: the handwritten digits shipped with saf_ref (8 x 8 pixels, one channel), standardised.
# Everything numerical in this notebook runs in float64, where a gradient check can resolve errors down
# to about $10^{-8}$.

# %%
digits = load_digits()
x_all = digits.x_train.astype(np.float64)
x_all = (x_all - x_all.mean()) / x_all.std()
x = x_all[:16]  # a batch, shape (N, C, H, W) = (16, 1, 8, 8)
labels = digits.y_train[:16]
print("batch", x.shape, x.dtype, "labels", labels)

# %% [markdown]
# ## 1. Convolution
#
# A convolution layer with weights $w$ of shape $(O, C, k_h, k_w)$ slides each of its $O$ filters over
# the (zero-padded) input $x_p$:
#
# $$y_{n,o,p,q} = b_o + \sum_{c,i,j} w_{o,c,i,j}\; x_{p\,n,\,c,\; p s + i,\; q s + j}.$$
#
# (Deep-learning "convolution" does not flip the kernel: it is a cross-correlation.) The output size is
# $\lfloor (H + 2\,\text{pad} - k) / s \rfloor + 1$. Two hand-made 3 x 3 filters show what it does:
# one responds to vertical edges, one to horizontal edges.

# %% figure="conv_feature_maps"
edges = np.array([[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],       # Sobel: vertical edges
                  [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]],      # Sobel: horizontal edges
                 dtype=np.float64)[:, None]                   # shape (O, C, kh, kw) = (2, 1, 3, 3)
raw = digits.x_train[:6].astype(np.float64)  # pixel values in [0, 1]: the background is 0, like the padding
maps, _ = conv2d_forward(raw, edges, padding=1)
fig, axes = plt.subplots(3, 6, figsize=(9, 4.8))
for col in range(6):
    for row, image in enumerate((raw[col, 0], maps[col, 0], maps[col, 1])):
        ax = axes[row, col]
        limit = np.abs(image).max()
        ax.imshow(image, cmap="gray" if row == 0 else "RdBu_r", vmin=-limit if row else 0, vmax=limit)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, col].set_title(f"digit {labels[col]}", fontsize=9)
for row, name in enumerate(("input", "vertical\nedges", "horizontal\nedges")):
    axes[row, 0].set_ylabel(name, fontsize=9)
fig.suptitle("A convolution with two 3x3 edge filters (red: positive, blue: negative)", fontsize=11)
fig.tight_layout()
plt.show()

# %% [markdown]
# The library's `conv2d_forward` must agree with the loops of `saf_ref.nn.naive.conv2d_naive`, which
# transcribe the formula literally and sum with `math.fsum` (correctly rounded). They cannot agree bit
# for bit (different summation orders), but a sum of $K$ products computed in floating point is off by at
# most $\gamma_K \sum |w|\,|x|$ with $\gamma_K = K u / (1 - K u)$ and $u = 2^{-53}$ (plus one rounding of
# the reference itself): that is the bound we assert, not an arbitrary tolerance.

# %%
w1 = rng.standard_normal((4, 1, 3, 3))
b1 = rng.standard_normal(4)
y_lib, cache = conv2d_forward(x, w1, b1, stride=1, padding=1)
y_loop = conv2d_naive(x, w1, b1, stride=1, padding=1)
magnitude, _ = conv2d_forward(np.abs(x), np.abs(w1), np.abs(b1), padding=1)  # sum of |w| |x| (+ |b|)
K = 1 * 3 * 3 + 1  # terms per output: 9 products and the bias
u = EPS64 / 2  # unit roundoff of float64, 2^-53
gamma = (K + 1) * u / (1 - (K + 1) * u)  # one rounding more: the reference's own final rounding
print(f"output {y_lib.shape}; largest difference {np.abs(y_lib - y_loop).max():.2e}, "
      f"bound {np.max(gamma * magnitude):.2e}")
assert np.all(np.abs(y_lib - y_loop) <= gamma * magnitude)

# %% [markdown]
# ### Im2col: a convolution is a matrix product
#
# Loops are slow in Python. The trick every framework uses: copy each $C \times k_h \times k_w$ input
# window into a column of a matrix `cols`, shape $(C k_h k_w,\ N H_o W_o)$; then the whole convolution
# is **one** matrix product with the weights reshaped to $(O,\ C k_h k_w)$. Here it is in four lines:

# %%
xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))                    # zero padding
windows = sliding_window_view(xp, (3, 3), axis=(2, 3))             # (N, C, Ho, Wo, kh, kw), a view
N, C, Ho, Wo = windows.shape[:4]
cols = windows.transpose(1, 4, 5, 0, 2, 3).reshape(C * 9, N * Ho * Wo)  # rows (c, i, j), columns (n, p, q)
y_im2col = (w1.reshape(4, -1) @ cols).reshape(4, N, Ho, Wo).transpose(1, 0, 2, 3) + b1[None, :, None, None]
print("cols", cols.shape, "= (C*kh*kw, N*Ho*Wo)")
assert np.all(np.abs(y_im2col - y_loop) <= gamma * magnitude)

# %% [markdown]
# ### The backward pass
#
# Given the loss gradient $dy = \partial L / \partial y$ (same shape as $y$), the chain rule through
# $Y = W \cdot \text{cols} + b$ gives three products:
#
# * $dW = dY\, \text{cols}^\top$ (each weight saw every window),
# * $db_o = \sum_{n,p,q} dy_{n,o,p,q}$,
# * $d\text{cols} = W^\top dY$, and `col2im` adds each column back to the input pixels it was copied
#   from, giving $dx$ (a pixel that sat in 9 windows collects 9 contributions).
#
# We check `conv2d_backward` two independent ways: against the scatter loops of
# `conv2d_backward_naive`, and against **central finite differences**. For the loss
# $L = \sum y \odot g$ with a fixed random $g$, $dy = g$, and
# $\partial L / \partial \theta \approx (L(\theta + h) - L(\theta - h)) / 2h$ with error
# $O(h^2)$ plus rounding: $10^{-8}$ relative or better here.

# %%
x_small = rng.standard_normal((2, 3, 6, 6))
w_small = rng.standard_normal((4, 3, 3, 3))
b_small = rng.standard_normal(4)
y_small, cache = conv2d_forward(x_small, w_small, b_small, stride=2, padding=1)
g = rng.standard_normal(y_small.shape)
grads = conv2d_backward(g, cache)
dx_loop, dw_loop, db_loop = conv2d_backward_naive(x_small, w_small, g, stride=2, padding=1)
for name, got, ref in (("dx", grads.dx, dx_loop), ("dw", grads.dw, dw_loop), ("db", grads.db, db_loop)):
    assert np.allclose(got, ref, rtol=1e-12, atol=1e-12), name


def conv_loss(x_, w_, b_):
    return float(np.sum(conv2d_forward(x_, w_, b_, stride=2, padding=1)[0] * g))


rows = []
for name, array, analytic, f in (
    ("dx", x_small, grads.dx, lambda v: conv_loss(v, w_small, b_small)),
    ("dw", w_small, grads.dw, lambda v: conv_loss(x_small, v, b_small)),
    ("db", b_small, grads.db, lambda v: conv_loss(x_small, w_small, v)),
):
    picks = [tuple(rng.integers(0, s) for s in array.shape) for _ in range(6)]
    numeric = np.array([central_difference(f, array, i) for i in picks])
    err = relative_error(numeric, analytic[tuple(np.array(picks).T)]).max()
    rows.append([name, len(picks), f"{err:.1e}"])
    assert err < 1e-6, (name, err)
print_table(["gradient", "entries checked", "max relative error"], rows)

# %% [markdown]
# ## 2. Batch normalisation
#
# Batch norm normalises every channel with statistics over the batch and both spatial axes, then applies
# a learned per-channel scale $\gamma$ and shift $\beta$. In training mode, with $n = N H W$ values per
# channel:
#
# $$\mu = \tfrac{1}{n} \sum x, \quad \sigma^2 = \tfrac{1}{n} \sum (x - \mu)^2, \quad
#   \hat{x} = \frac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}}, \quad y = \gamma \hat{x} + \beta .$$
#
# It also keeps *running* statistics for evaluation mode:
# $\mu_r \leftarrow 0.9\,\mu_r + 0.1\,\mu$ and
# $\sigma^2_r \leftarrow 0.9\,\sigma^2_r + 0.1\,\sigma^2 \frac{n}{n-1}$
# (note: the running variance uses the *unbiased* estimate, the output the *biased* one; PyTorch's
# convention). By hand:

# %%
h = y_lib  # the 4-channel convolution output from above, (16, 4, 8, 8)
gamma_bn, beta_bn = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
run_mean, run_var = np.zeros(4), np.ones(4)
eps = 1e-5

mu = h.mean(axis=(0, 2, 3))
var = h.var(axis=(0, 2, 3))  # biased (divides by n)
x_hat = (h - mu[None, :, None, None]) / np.sqrt(var + eps)[None, :, None, None]
y_hand = gamma_bn[None, :, None, None] * x_hat + beta_bn[None, :, None, None]
n_per_channel = h.shape[0] * h.shape[2] * h.shape[3]
new_mean_hand = 0.9 * run_mean + 0.1 * mu
new_var_hand = 0.9 * run_var + 0.1 * var * n_per_channel / (n_per_channel - 1)

y_bn, new_mean, new_var, bn_cache = batchnorm2d_forward(h, gamma_bn, beta_bn, run_mean, run_var, train=True)
y_naive, mean_naive, var_naive = batchnorm2d_naive(h, gamma_bn, beta_bn, run_mean, run_var, train=True)
for got, hand, naive in ((y_bn, y_hand, y_naive), (new_mean, new_mean_hand, mean_naive),
                         (new_var, new_var_hand, var_naive)):
    assert np.allclose(got, hand, rtol=1e-12, atol=1e-12) and np.allclose(got, naive, rtol=1e-12, atol=1e-12)
print("per-channel mean after BN (= beta):", np.round(y_bn.mean(axis=(0, 2, 3)), 6))
print("per-channel std after BN (= gamma):", np.round(y_bn.std(axis=(0, 2, 3)), 4))
assert np.allclose(y_bn.mean(axis=(0, 2, 3)), beta_bn) and np.allclose(y_bn.std(axis=(0, 2, 3)), gamma_bn,
                                                                       rtol=1e-4)

# %% [markdown]
# Whatever the scale of each channel before, afterwards channel $c$ has mean $\beta_c$ and standard
# deviation $\gamma_c$ (up to $\varepsilon$):

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 2.8), sharey=True)
for c in range(4):
    axes[0].hist(h[:, c].ravel(), bins=40, histtype="step", lw=1.5, label=f"channel {c}")
    axes[1].hist(y_bn[:, c].ravel(), bins=40, histtype="step", lw=1.5)
axes[0].set_title("conv output (input of batch norm)", fontsize=10)
axes[1].set_title("after batch norm", fontsize=10)
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Backward through batch norm
#
# $\partial L/\partial\beta = \sum dy$ and $\partial L/\partial\gamma = \sum dy\,\hat{x}$. For $dx$, the
# statistics $\mu$ and $\sigma^2$ depend on *every* $x$ of the channel, which adds two terms to the
# naive $\gamma\, dy / \sigma$:
#
# $$dx = \frac{\gamma}{\sqrt{\sigma^2 + \varepsilon}}
#        \Bigl(dy - \overline{dy} - \hat{x}\;\overline{dy \odot \hat{x}}\Bigr),$$
#
# where the bars are per-channel means. The first removes the part of $dy$ that would shift the mean, the
# second the part that would change the variance. By hand, then against finite differences:

# %%
g_bn = rng.standard_normal(h.shape)
bn_grads = batchnorm2d_backward(g_bn, bn_cache)


def channel_mean(a):
    return a.mean(axis=(0, 2, 3), keepdims=True)


dx_hand = (gamma_bn / np.sqrt(var + eps))[None, :, None, None] * (
    g_bn - channel_mean(g_bn) - x_hat * channel_mean(g_bn * x_hat))
assert np.allclose(bn_grads.dx, dx_hand, rtol=1e-10, atol=1e-12)
assert np.allclose(bn_grads.dweight, np.sum(g_bn * x_hat, axis=(0, 2, 3)))
assert np.allclose(bn_grads.dbias, g_bn.sum(axis=(0, 2, 3)))


def bn_loss(h_, gamma_, beta_):
    return float(np.sum(batchnorm2d_forward(h_, gamma_, beta_, run_mean, run_var, train=True)[0] * g_bn))


rows = []
for name, array, analytic, f in (
    ("dx", h, bn_grads.dx, lambda v: bn_loss(v, gamma_bn, beta_bn)),
    ("dgamma", gamma_bn, bn_grads.dweight, lambda v: bn_loss(h, v, beta_bn)),
    ("dbeta", beta_bn, bn_grads.dbias, lambda v: bn_loss(h, gamma_bn, v)),
):
    picks = [tuple(rng.integers(0, s) for s in array.shape) for _ in range(6)]
    numeric = np.array([central_difference(f, array, i) for i in picks])
    err = relative_error(numeric, analytic[tuple(np.array(picks).T)]).max()
    rows.append([name, f"{err:.1e}"])
    assert err < 1e-5, (name, err)
print_table(["gradient", "max relative error vs finite differences"], rows)

# %% [markdown]
# ## 3. The basic block
#
# A ResNet is a stack of *basic blocks*. Each computes a residual branch and adds it to a shortcut:
#
# ```
#        x ──► conv3x3 (stride s) ─► BN ─► ReLU ─► conv3x3 ─► BN ──►(+)─► ReLU ─► y
#        │                                                        ▲
#        └────────── identity, or conv1x1 (stride s) ─► BN ───────┘   (when the shape changes)
# ```
#
# Parameters are a plain `dict` keyed by PyTorch / torchvision `state_dict` names
# (`"layer2.0.conv1.weight"`), running statistics a second dict. We take a ResNet-20 of width 4
# (channels 4 / 8 / 16) for one-channel images, and look at the first block of stage 2, which halves the
# resolution and doubles the channels, so it has a `downsample` shortcut.

# %%
params, state = init_resnet("resnet20", in_channels=1, num_classes=10, width=4, rng=0, dtype=np.float64)
block = "layer2.0."
print({k: v.shape for k, v in params.items() if k.startswith(block)})

# the block's input: the stem (conv, BN, ReLU) applied to our digits, shape (16, 4, 8, 8)
stem, _, _, _ = batchnorm2d_forward(conv2d_forward(x, params["conv1.weight"], padding=1)[0],
                                    params["bn1.weight"], params["bn1.bias"], state["bn1.running_mean"],
                                    state["bn1.running_var"], train=True)
block_in, _ = relu_forward(stem)

# %% [markdown]
# First the forward pass by hand, op by op, then the library's `basic_block_forward`. They execute the
# same operations in the same order, so they must agree **bit for bit**.

# %%
def conv_bn(v, name_conv, name_bn, stride, padding):
    out, _ = conv2d_forward(v, params[name_conv + ".weight"], stride=stride, padding=padding)
    out, _, _, _ = batchnorm2d_forward(out, params[name_bn + ".weight"], params[name_bn + ".bias"],
                                       state[name_bn + ".running_mean"], state[name_bn + ".running_var"],
                                       train=True)
    return out


branch, _ = relu_forward(conv_bn(block_in, block + "conv1", block + "bn1", stride=2, padding=1))
branch = conv_bn(branch, block + "conv2", block + "bn2", stride=1, padding=1)
shortcut = conv_bn(block_in, block + "downsample.0", block + "downsample.1", stride=2, padding=0)
y_by_hand, _ = relu_forward(branch + shortcut)

y_block, new_state, block_cache = basic_block_forward(block_in, params, state, block, stride=2, train=True)
print("block input", block_in.shape, "-> output", y_block.shape)
assert np.array_equal(y_block, y_by_hand)
print("updated running statistics:", sorted(new_state))

# %% [markdown]
# The backward pass runs the same path in reverse. At the addition the gradient *copies* into both
# branches, and at the input the two contributions add up:
# $dx = dx_{\text{branch}} + dx_{\text{shortcut}}$. We check every parameter of the block and the input
# against finite differences.

# %%
g_block = rng.standard_normal(y_block.shape)
dx_block, block_grads = basic_block_backward(g_block, block_cache)


def block_loss(inp, prm):
    return float(np.sum(basic_block_forward(inp, prm, state, block, stride=2, train=True)[0] * g_block))


def with_param(name, value):
    return {**params, name: value}  # a new dict: the original parameters are never modified


rows = []
checks = [("input x", block_in, dx_block, lambda v: block_loss(v, params))]
for name in sorted(block_grads):
    checks.append((name, params[name], block_grads[name],
                   lambda v, name=name: block_loss(block_in, with_param(name, v))))
for name, array, analytic, f in checks:
    picks = [tuple(rng.integers(0, s) for s in array.shape) for _ in range(4)]
    numeric = np.array([central_difference(f, array, i) for i in picks])
    err = relative_error(numeric, analytic[tuple(np.array(picks).T)]).max()
    rows.append([name, f"{err:.1e}"])
    assert err < 1e-5, (name, err)
print_table(["gradient of", "max relative error vs finite differences"], rows)

# %% [markdown]
# ## 4. The same numbers from PyTorch
#
# If PyTorch is installed, we build the same block from `torch.nn` layers (in float64), load *our*
# parameters into it, and compare the output, every gradient and the updated running statistics. (The
# names match because saf_ref uses torchvision's; a whole torchvision ResNet loads with
# `saf_ref.nn.load_torch_state_dict`.)

# %%
try:
    import torch
except ImportError:
    torch = None
    print("PyTorch is not installed: skipping the comparison (pip install torch to run it).")

if torch is not None:
    torch.manual_seed(0)
    tnn = torch.nn

    class TorchBasicBlock(tnn.Module):
        """torchvision.models.resnet.BasicBlock, spelled out."""

        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(c_out)
            self.conv2 = tnn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(c_out)
            self.downsample = tnn.Sequential(tnn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                             tnn.BatchNorm2d(c_out))

        def forward(self, v):
            out = torch.relu(self.bn1(self.conv1(v)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + self.downsample(v))

    tblock = TorchBasicBlock(4, 8, stride=2).double().train()
    ours = {**{k: v for k, v in params.items() if k.startswith(block)},
            **{k: v for k, v in state.items() if k.startswith(block)}}
    loaded = {k[len(block):]: torch.from_numpy(v.copy()) for k, v in ours.items()}
    missing = tblock.load_state_dict(loaded, strict=False)  # only the batch counters are not ours
    assert not missing.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in missing.missing_keys)

    tx = torch.from_numpy(block_in.copy()).requires_grad_(True)
    ty = tblock(tx)
    (ty * torch.from_numpy(g_block)).sum().backward()
    t_grads = {block + k: p.grad.numpy() for k, p in tblock.named_parameters()}
    t_state = {block + k: b.numpy() for k, b in tblock.named_buffers() if "running" in k}

    diffs = {"output y": relative_error(ty.detach().numpy(), y_block).max(),
             "input gradient": relative_error(tx.grad.numpy(), dx_block).max()}
    diffs.update({name: relative_error(t_grads[name], block_grads[name]).max() for name in sorted(t_grads)})
    diffs.update({name: relative_error(t_state[name], new_state[name]).max() for name in sorted(t_state)})
    print_table(["quantity", "max relative difference, PyTorch vs saf_ref (float64)"],
                [[name, f"{d:.1e}"] for name, d in diffs.items()])
    assert max(diffs.values()) < 1e-9

# %% [markdown]
# ## 5. The whole network
#
# `resnet_forward` chains the stem, nine basic blocks, global average pooling and a linear classifier;
# `resnet_backward` runs it backwards and returns a gradient for every parameter, by name. A classic
# sanity check before any real training: a network must be able to *memorise* one small batch. Twenty
# SGD steps on 64 digits, in float32 as a real training run would use:

# %%
p32 = {k: v.astype(np.float32) for k, v in params.items()}
s32 = {k: v.astype(np.float32) for k, v in state.items()}
xb, yb = x_all[:64].astype(np.float32), digits.y_train[:64]
opt, opt_state = SGD(lr=0.1, momentum=0.9), sgd_init(p32)
losses = []
for _ in range(20):
    logits, s32, net_cache = resnet_forward(p32, s32, xb, arch="resnet20", train=True)
    loss, loss_cache = cross_entropy_forward(logits, yb)
    net_grads = resnet_backward(cross_entropy_backward(1.0, loss_cache).dlogits, net_cache).params
    p32, opt_state = sgd_step(p32, net_grads, opt_state, opt)
    losses.append(float(loss))
print(f"{len(p32)} parameter tensors, {sum(v.size for v in p32.values())} weights")
print("loss, every 4 steps:", np.round(losses[::4], 3), "->", round(losses[-1], 3))
assert losses[-1] < 0.5 * losses[0] and all(v.dtype == np.float32 for v in p32.values())

# %% [markdown]
# ## Exercises
#
# Each exercise has a **TODO** cell for your answer, a folded **solution** cell (click the `...` to
# unfold it; try first), and a **check** cell that tests your answer against an independent computation.
# While a TODO still says `None`, the check tests the worked solution, so the notebook always runs
# from top to bottom.
#
# **Exercise 1.** What output sizes do a 3 x 3 convolution with stride 2 produce on an 8 x 8 input with
# padding 1, and with padding 0? Predict with the formula.

# %%
# TODO: (size with padding 1, size with padding 0), for example answer_1 = (8, 6)
answer_1 = None

# %% jupyter={"source_hidden": true}
# Solution. floor((8 + 2*1 - 3) / 2) + 1 = 3 + 1 = 4 and floor((8 - 3) / 2) + 1 = 2 + 1 = 3: with no
# padding the last column and row of the input are never the centre of a window and are simply dropped.
solution_1 = ((8 + 2 * 1 - 3) // 2 + 1, (8 + 2 * 0 - 3) // 2 + 1)
print(solution_1)


# %%
def test_1(sizes):
    for pad, size in zip((1, 0), sizes, strict=True):
        out = conv2d_naive(x[:1], w1, stride=2, padding=pad)  # the literal loops of the formula
        assert out.shape[2:] == (size, size), f"padding {pad}: the output is {out.shape[2:]}, not {size}"


check(test_1, answer_1, solution_1)

# %% [markdown]
# **Exercise 2.** In evaluation mode batch norm is a fixed affine map per channel, so it can be *folded*
# into the convolution before it. Write `fold` returning $w'$ and $b'$ with
# $\mathrm{conv}(x, w', b') = \mathrm{BN}_{\text{eval}}(\mathrm{conv}(x, w))$.

# %%
def my_fold(w, gamma, beta, mu_r, var_r, eps):
    raise NotImplementedError("TODO: return (w_folded, b_folded)")


# TODO: once my_fold is written, set answer_2 = my_fold
answer_2 = None


# %% jupyter={"source_hidden": true}
# Solution. BN_eval(z) = gamma (z - mu_r) / sqrt(var_r + eps) + beta. With s = gamma / sqrt(var_r + eps)
# per output channel: w' = s * w (scale each filter), b' = beta - s * mu_r.
def fold(w, gamma, beta, mu_r, var_r, eps):
    s_fold = gamma / np.sqrt(var_r + eps)
    return w * s_fold[:, None, None, None], beta - s_fold * mu_r


solution_2 = fold


# %%
def test_2(fold_fn):
    mu_r, var_r = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    w_fold, b_fold = fold_fn(w1, gamma_bn, beta_bn, mu_r, var_r, eps)
    z = conv2d_naive(x[:4], w1, None, stride=1, padding=1)  # the reference: loops and math.fsum
    bn_eval, _, _ = batchnorm2d_naive(z, gamma_bn, beta_bn, mu_r, var_r, train=False)
    folded = conv2d_naive(x[:4], w_fold, b_fold, stride=1, padding=1)
    print(f"largest difference {np.abs(folded - bn_eval).max():.1e}")
    assert np.allclose(folded, bn_eval, rtol=1e-12, atol=1e-12)


check(test_2, answer_2, solution_2)

# %% [markdown]
# **Exercise 3.** Set $\gamma = 0$ in the *second* batch norm of a block without downsample
# (`layer1.0`). What does the block compute, and what is its input gradient? (This "zero-init residual"
# trick makes very deep ResNets start as shallow ones.) Answer with two functions: $y(x)$ and
# $dx(x, dy)$.

# %%
# TODO: (lambda x: <the block's output>, lambda x, dy: <its input gradient>)
answer_3 = None

# %% jupyter={"source_hidden": true}
# Solution. bn2 then outputs beta2 = 0 (its initial value), so y = relu(0 + x) = x, because the block's
# input is itself the output of a ReLU (non-negative). The gradient passes through the shortcut
# unchanged, masked by the final ReLU: dx = dy * [x > 0]. (The residual branch receives gradient for its
# bn2 parameters only: bn2's gamma = 0 blocks everything before it.)
solution_3 = (lambda x_: x_, lambda x_, dy: dy * (x_ > 0))


# %%
def test_3(answer):
    y_of, dx_of = answer
    zero_params = {**params, "layer1.0.bn2.weight": np.zeros(4)}
    y0, _, cache0 = basic_block_forward(block_in, zero_params, state, "layer1.0.", stride=1, train=True)
    g0 = rng.standard_normal(y0.shape)
    dx0, grads0 = basic_block_backward(g0, cache0)
    assert np.array_equal(y_of(block_in), y0), "the block's output differs"
    assert np.allclose(dx_of(block_in, g0), dx0, rtol=0, atol=1e-15), "the input gradient differs"
    assert np.all(grads0["layer1.0.conv1.weight"] == 0) and np.any(grads0["layer1.0.bn2.weight"] != 0)


check(test_3, answer_3, solution_3)

# %% [markdown]
# ## Summary
#
# * A convolution is a sum of products over windows; *im2col* makes it one matrix product, and its
#   backward pass two more plus a scatter (*col2im*).
# * Batch norm's backward pass has two extra terms because the batch statistics depend on the input.
# * A basic block adds a residual branch to a shortcut; gradients copy at the addition and add at the
#   input.
# * Every gradient here matches central finite differences, and the whole block matches PyTorch to
#   float64 rounding.
#
# Next: [4. Saturated weight transforms](04_saturated_weight_transforms.ipynb), which puts these
# networks in faulty memory.
