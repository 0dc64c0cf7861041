"""Mesh construction, its errors, and logical-name -> NamedSharding mapping (single CPU device)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from interaction_jax.parallel import (
    MESH_AXES,
    MeshError,
    logical_sharding,
    make_mesh,
    param_shardings,
    resolve_mesh_shape,
    shard_params,
)


def test_resolve_shape_orders_axes_and_fills_rest():
    assert resolve_mesh_shape({"expert": 4, "data": 2}, 8) == (2, 1, 4, 1)
    assert resolve_mesh_shape({"data": 2, "fsdp": -1}, 8) == (2, 4, 1, 1)


@pytest.mark.parametrize(
    "shape, match",
    [
        ({"data": 2, "fsdp": 2}, "needs 4 devices but 8 are available"),
        ({"dta": 8}, "unknown mesh axes \\['dta'\\]"),
        ({"data": -1, "fsdp": -1}, "at most one mesh axis may be -1"),
        ({"data": 3, "fsdp": -1}, "not divisible by 3"),
        ({"data": 0}, "must be positive"),
    ],
)
def test_resolve_shape_errors_are_clear(shape, match):
    with pytest.raises(MeshError, match=match):
        resolve_mesh_shape(shape, 8)


def test_make_mesh_on_available_devices():
    n = jax.device_count()
    mesh = make_mesh()
    assert mesh.axis_names == MESH_AXES and mesh.devices.size == n
    with pytest.raises(MeshError, match="the product of the axis sizes must equal the device count"):
        make_mesh({"data": n + 1})


def test_make_mesh_accepts_config_dict():
    import ml_collections

    mesh = make_mesh(ml_collections.ConfigDict({"expert": 1, "fsdp": -1}))
    assert dict(mesh.shape) == {"data": 1, "fsdp": jax.device_count(), "expert": 1, "tensor": 1}


def test_logical_sharding_uses_rules():
    mesh = make_mesh({"fsdp": -1})
    assert logical_sharding(mesh, ("batch", "length", "act_embed")).spec == P(("data", "fsdp"), None, None)
    with pytest.raises(KeyError, match="no rule"):
        logical_sharding(mesh, ("nonsense",))


class _Tiny(nnx.Module):
    def __init__(self, rngs):
        init = nnx.with_partitioning(
            nnx.initializers.lecun_normal(), ("expert", "embed", "expert_mlp"), eager_sharding=False
        )
        self.w = nnx.Param(init(rngs.params(), (4, 8, 6)))
        self.b = nnx.Param(jnp.zeros((6,)))


def test_param_shardings_map_metadata_through_rules():
    mesh = make_mesh({"fsdp": -1})
    state = nnx.state(_Tiny(nnx.Rngs(0)))
    shardings = param_shardings(state, mesh)
    assert shardings["w"].get_value().spec == P("expert", "fsdp", "tensor")
    assert shardings["b"].get_value().spec == P()
    placed = shard_params(state, mesh)
    assert placed["w"].get_value().sharding.spec == P("expert", "fsdp", "tensor")


def test_param_shardings_warn_naming_what_they_replicate():
    """strict=False replicates a dim the mesh does not divide, and says so (name, shape, axis)."""
    import warnings

    from jax.sharding import AbstractMesh, AxisType

    from interaction_jax.parallel.mesh import ReplicatedParamWarning

    mesh = AbstractMesh((1, 3, 1, 1), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))  # fsdp=3
    state = nnx.state(_Tiny(nnx.Rngs(0)))  # w (4, 8, 6): embed=8 is not divisible by fsdp=3
    expected = r"1 parameter\(s\) .*: w \(4, 8, 6\) \(dim 1 of size 8 not divisible by fsdp=3\)"
    with pytest.warns(ReplicatedParamWarning, match=expected):
        shardings = param_shardings(state, mesh)
    assert shardings["w"].get_value().spec == P("expert", None, "tensor")
    divisible = AbstractMesh((1, 2, 1, 1), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert param_shardings(state, divisible)["w"].get_value().spec == P("expert", "fsdp", "tensor")
