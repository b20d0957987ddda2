"""Image networks: the paper's latent grids, odd sizes, time conditioning."""

import pytest
import torch

from pbridge.image_networks import ResNetDecoder, ResNetEncoder, UNetDenoiser


@pytest.mark.parametrize(
    "image, k, grid",
    [((3, 32, 32), 1, 16), ((1, 28, 28), 1, 14), ((3, 84, 84), 2, 21), ((1, 8, 8), 1, 4)],
    ids=["cifar10", "fashion-mnist", "miniimagenet", "digits"],
)
def test_encoder_decoder_grids(image, k, grid):
    encoder, decoder = ResNetEncoder(image[0], 8, k), ResNetDecoder(8, image[0], k)
    z = encoder(torch.randn(2, *image))
    assert z.shape == (2, 8, grid, grid)
    assert decoder(z).shape == (2, *image)


@pytest.mark.parametrize("grid", [21, 16, 14, 7, 4], ids=lambda g: f"{g}x{g}")
def test_unet_keeps_any_grid(grid):
    net = UNetDenoiser(8, width=16, channel_mults=(1, 2, 2), blocks=2)
    z = torch.randn(3, 8, grid, grid)
    out = net(z, torch.tensor([1, 500, 1000]))
    assert out.shape == z.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised output: eps_theta = 0 at the start


def test_unet_uses_time_and_every_parameter():
    torch.manual_seed(0)
    net = UNetDenoiser(4, width=16, channel_mults=(1, 2))
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    z = torch.randn(1, 4, 7, 7).expand(2, 4, 7, 7)
    out = net(z, torch.tensor([3, 800]))
    assert not torch.allclose(out[0], out[1])  # same input, different t
    out.square().sum().backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert unused == []


def test_unet_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"\(B, 8, h, w\)"):
        UNetDenoiser(8, width=16)(torch.zeros(1, 4, 7, 7), torch.tensor([1]))
