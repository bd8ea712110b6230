"""Multi-device fitting without DistributedDataParallel's gradient machinery.

StreamingPadim trains no parameters: each process folds its shard of the images into Gaussian
statistics, and the statistics are all-reduced once at the end of the epoch. torch's
DistributedDataParallel refuses a module without trainable parameters, so this strategy keeps
everything DDP sets up (process group, samplers, one process per device) except that wrapper.
"""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry


class StreamingDDPStrategy(DDPStrategy):
    """DDP processes and data sharding, without wrapping the model (there are no gradients)."""

    strategy_name = "ddp_streaming"

    def configure_ddp(self) -> None:
        """Leave the LightningModule unwrapped; statistics are reduced by the model itself."""


if StreamingDDPStrategy.strategy_name not in StrategyRegistry:
    StrategyRegistry.register(
        StreamingDDPStrategy.strategy_name,
        StreamingDDPStrategy,
        description="DDP without the DistributedDataParallel wrapper, for StreamingPadim",
    )
