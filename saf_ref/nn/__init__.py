"""saf_ref.nn: the network stack as pure forward/backward pairs.

Every op is a pair ``*_forward(...) -> (y, cache)`` / ``*_backward(dy, cache) -> grads`` with NamedTuple
caches and gradients, plus a ``*_vjp`` wrapper taking primal inputs; :mod:`saf_ref.nn.naive` holds loop
implementations of every op, the executable specification the tests compare against. Models
(:mod:`~saf_ref.nn.resnet`, :mod:`~saf_ref.nn.small`) keep parameters in ``dict[str, ndarray]`` keyed by
torchvision ``state_dict`` names and compute with the weights they are given: latents become weights
only in :mod:`saf_ref.protect` (``nn`` never imports ``protect``). :mod:`~saf_ref.nn.blocks` holds the
composites they are built of (conv + batch norm, clipped ReLU), :mod:`~saf_ref.nn.norms` the normalisation
options (batch or group norm, :mod:`~saf_ref.nn.groupnorm`; reparameterized or not), and
:mod:`~saf_ref.nn.registry` names them.
"""

from saf_ref.nn.activations import (
    relu_backward,
    relu_clipped_backward,
    relu_clipped_forward,
    relu_clipped_vjp,
    relu_forward,
    relu_vjp,
)
from saf_ref.nn.batchnorm import batchnorm2d_backward, batchnorm2d_forward, batchnorm2d_vjp
from saf_ref.nn.blocks import ModelGrads, conv_bn_backward, conv_bn_forward
from saf_ref.nn.conv import conv2d_backward, conv2d_forward, conv2d_vjp
from saf_ref.nn.groupnorm import default_num_groups, groupnorm_backward, groupnorm_forward, groupnorm_vjp
from saf_ref.nn.linear import linear_backward, linear_forward, linear_vjp
from saf_ref.nn.loss import cross_entropy_backward, cross_entropy_forward, cross_entropy_vjp
from saf_ref.nn.pool import (
    global_avgpool_backward,
    global_avgpool_forward,
    global_avgpool_vjp,
    maxpool2d_backward,
    maxpool2d_forward,
    maxpool2d_vjp,
)
from saf_ref.nn.registry import ModelFns, model_fns
from saf_ref.nn.resnet import (
    ARCHS,
    basic_block_backward,
    basic_block_forward,
    init_resnet,
    resnet_backward,
    resnet_forward,
    resnet_shapes,
)
from saf_ref.nn.small import (
    init_mlp,
    init_small_cnn,
    mlp_backward,
    mlp_forward,
    small_cnn_backward,
    small_cnn_forward,
)
from saf_ref.nn.state_dict import export_state_dict, load_torch_state_dict

__all__ = [
    "ARCHS",
    "ModelFns",
    "ModelGrads",
    "basic_block_backward",
    "basic_block_forward",
    "batchnorm2d_backward",
    "batchnorm2d_forward",
    "batchnorm2d_vjp",
    "conv2d_backward",
    "conv2d_forward",
    "conv2d_vjp",
    "conv_bn_backward",
    "conv_bn_forward",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "cross_entropy_vjp",
    "default_num_groups",
    "export_state_dict",
    "global_avgpool_backward",
    "global_avgpool_forward",
    "global_avgpool_vjp",
    "groupnorm_backward",
    "groupnorm_forward",
    "groupnorm_vjp",
    "init_mlp",
    "init_resnet",
    "init_small_cnn",
    "linear_backward",
    "linear_forward",
    "linear_vjp",
    "load_torch_state_dict",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "maxpool2d_vjp",
    "mlp_backward",
    "mlp_forward",
    "model_fns",
    "relu_backward",
    "relu_clipped_backward",
    "relu_clipped_forward",
    "relu_clipped_vjp",
    "relu_forward",
    "relu_vjp",
    "resnet_backward",
    "resnet_forward",
    "resnet_shapes",
    "small_cnn_backward",
    "small_cnn_forward",
]
