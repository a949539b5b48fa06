"""Training: config, optimiser, jitted steps, the resumable loop, checkpoints, metrics, stages.

The Caffe-SGD optimiser, jitted steps over a device mesh, the resumable loop, checkpoints, metrics
writers and the pipeline stages (cues -> dsrg -> pseudo -> retrain -> eval).

Vocabulary:
    cfg = experiments.configs.digits.get_config()            # or voc / coco
    stages.run(cfg, workdir)                                  # all stages, resumable
    state = steps.create_state(params, optim.caffe_sgd(params, cfg.dsrg.optim))
    step = steps.make_dsrg_train_step(model, tx, convention, mesh, cfg.dsrg)
    state, aux = step(state, sharding.global_batch(host_batch, mesh))
    loop.train_loop(...)                                      # checkpoints, SIGTERM, NaN guard
"""
