"""The learning side: the learner and its step, the continual-learning plugins, augmentation,
optimizers, replay buffers, and the measures (CKA, kNN/linear probes, FLOPs) they use. No I/O."""
