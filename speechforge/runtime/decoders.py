"""The runtime's decoders by name, as a run's recipe names their PyTorch counterparts."""

from speechforge.runtime.beam import beam
from speechforge.runtime.search import ctc_greedy, greedy

DECODERS = {"greedy": greedy, "ctc_greedy": ctc_greedy, "beam": beam}
