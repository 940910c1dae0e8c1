"""The default batch size: 8 on the CPU; on a GPU, from the image size, the device's memory and the train split's size."""

from __future__ import annotations

#: Batch size on the CPU (and the floor on a GPU).
CPU_BATCH_SIZE = 8
#: Training memory of one 256x256 image for the default U-Net (16 channels, depth 4) in bf16 mixed
#: precision: activations kept for the backward pass, bf16 and fp32 copies, the cuDNN workspace's
#: share; rounded up, on purpose.
BYTES_PER_256_IMAGE = 96 * 2**20
#: Share of the device's memory the batch may take (the rest: the model, the optimizer, the
#: allocator's slack, torch.compile's buffers).
MEMORY_SHARE = 0.5
#: Device memory assumed where it cannot be read.
ASSUMED_DEVICE_MEMORY = 16 * 2**30
#: Throughput stops rising at about this many pixels per batch (H100, bf16: batch 128 of 256x256
#: chips gave 2,705 images/s, batch 32 2,050).
SATURATING_PIXELS = 128 * 256 * 256
#: Optimizer steps per epoch and device the batch leaves at least (a small split needs steps).
MIN_STEPS_PER_EPOCH = 8


def _floor_power_of_two(value: float) -> int:
    return 1 << max(0, int(value).bit_length() - 1) if value >= 1 else 1


def default_batch_size(on_gpu: bool, image_size: int, bands: int, train_chips: int, devices: int = 1,
                       device_memory_bytes: int | None = None) -> int:
    """Chips per batch and device when the user gave none.

    On the CPU :data:`CPU_BATCH_SIZE`. On a GPU the largest power of two that (1) fits
    :data:`MEMORY_SHARE` of ``device_memory_bytes`` at :data:`BYTES_PER_256_IMAGE` scaled by
    ``image_size**2``, (2) stays within :data:`SATURATING_PIXELS` per batch (128 chips of 256x256)
    and (3) leaves each of ``devices`` processes at least :data:`MIN_STEPS_PER_EPOCH` optimizer
    steps per epoch on ``train_chips``; never below :data:`CPU_BATCH_SIZE`.
    """
    if not on_gpu:
        return CPU_BATCH_SIZE
    pixels = image_size * image_size
    per_image = BYTES_PER_256_IMAGE * pixels / (256 * 256) + 4 * bands * pixels  # + the float input
    memory = device_memory_bytes if device_memory_bytes else ASSUMED_DEVICE_MEMORY
    by_memory = memory * MEMORY_SHARE / per_image
    by_pixels = SATURATING_PIXELS / pixels
    by_steps = train_chips / (max(1, devices) * MIN_STEPS_PER_EPOCH)
    return max(CPU_BATCH_SIZE, _floor_power_of_two(min(by_memory, by_pixels, by_steps)))


def device_memory() -> int | None:
    """Total memory of the first visible CUDA device in bytes; None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(0).total_memory)
