"""Suite-wide settings: the tests use tiny tensors, for which one intra-op thread is fastest and
immune to oversubscription on a busy 2-core machine."""
import torch

torch.set_num_threads(1)
