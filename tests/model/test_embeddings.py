import torch

from speechforge.model.embeddings import Conv2dSubsampling


def test_conv_front_end_runs_channels_last_and_computes_what_contiguous_weights_do():
    torch.manual_seed(0)
    front = Conv2dSubsampling(20, 16, 4, 8, 0.0).eval()
    conv = front.convs[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    reference = Conv2dSubsampling(20, 16, 4, 8, 0.0).eval()
    # a checkpoint saved with contiguous weights loads into the channels-last ones
    reference.convs.to(memory_format=torch.contiguous_format)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    front.load_state_dict(state)
    assert front.convs[2].weight.is_contiguous(memory_format=torch.channels_last)
    feats, lens = torch.randn(3, 50, 20), torch.tensor([50, 41, 30])
    with torch.no_grad():
        out, out_lens = front(feats, lens)
        expected, expected_lens = reference(feats, lens)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert out_lens.tolist() == expected_lens.tolist()
