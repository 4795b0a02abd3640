import torch

from trainlab.models import GPT, GPTConfig, PooledMLP, SmallCNN
from trainlab.tasks import VOCAB, decode, encode, sample_text, windows


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mnist_mlp_has_386_parameters_at_defaults():
    assert n_params(PooledMLP()) == 386  # 36*8 + 8 + 8*10 + 10


def test_mnist_cnn_has_395_parameters():
    assert n_params(SmallCNN()) == 108 + 24 + 12 * 11 + 11 + 11 * 10 + 10 == 395


def test_shakespeare_gpt_has_952_parameters():
    assert n_params(GPT(GPTConfig())) == 952  # 26*8 tok + 16*8 pos + block 8+192+64+8+64+64 + ln_f 8 + head 208


def test_gpt_linears_are_bias_free_and_init_is_normal_002():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_embd=64, n_head=4, n_layer=2))
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            assert module.bias is None
    std = model.head.weight.std().item()
    assert 0.018 < std < 0.022


def test_gpt_is_causal():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_embd=16, n_head=2))
    x = torch.randint(0, 26, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 26
    assert torch.equal(model(x)[0, :10], model(y)[0, :10])


def test_vocabulary_maps_everything_outside_a_to_y_to_space():
    assert len(VOCAB) == 26
    assert decode(encode("Hello, World! zZ")) == "hello  world    "


def test_windows_are_shifted_by_one():
    x, y = windows(torch.arange(10), 4, 2)
    assert x.tolist() == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]
    assert y.tolist() == [[1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7, 8]]


def test_sampling_is_seeded_and_temperature_zero_is_greedy():
    torch.manual_seed(0)
    model = GPT(GPTConfig())
    assert sample_text(model, "the ", 20, 1.0, seed=5) == sample_text(model, "the ", 20, 1.0, seed=5)
    greedy = sample_text(model, "the ", 20, 0.0, seed=1)
    assert greedy == sample_text(model, "the ", 20, 0.0, seed=2)
    assert len(greedy) == 24
