"""Separation: the model and everything that runs it, apart from the daemon.

    engine       the preloaded Demucs model on its device: loading, precision,
                 batch size, normalisation, the forward passes (the one module
                 that runs torch model code, with batching and streaming)
    batching     apply_model's chunk plan, grouped into batches
    streaming    apply_model's sums, window by window
    workfiles    the work area: raw float32 work files, the mix's statistics
    modelnames   which model names demucs can load, read without torch
    modelcache   which hub models are on disk; going offline when the hub is away
    hub          can the model hub be reached (one TCP connection)

Nothing here knows the ledger, the inbox or HTTP; the daemon (stemd.worker,
stemd.track) drives it. This face imports nothing, so `stemd check` can ask
modelnames without loading torch.
"""
