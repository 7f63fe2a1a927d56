"""Separation: the model and everything that runs it, apart from the daemon.

    engine       the preloaded Demucs model on its device: loading, precision,
                 batch size, normalisation, the forward passes (the one module
                 that runs torch model code, with batching and streaming)
    backends     model.backend: which networks OpenVINO runs (after a parity
                 check against torch), auto's timing, precision as it runs
    cutgraph     HTDemucs cut where its complex numbers begin: the network
                 alone, and the STFT side around any runtime's network
    openvino_net the network exported to OpenVINO and compiled for the CPU
    exports      exported networks in state_dir, checked by hash on load
    cpu          the CPU's flags and cores; one forward pass's threads
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
