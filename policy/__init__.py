"""The LaMP-style dual-expert policy: loader, model parts, trainer, closed-loop evaluation.

Public entry points (import the submodules; nothing heavy is imported here):
    policy.config.LaMPConfig, policy.config.TrainConfig
    policy.modeling_lamp.LaMPPolicy           reset / select_action / predict_action_chunk / forward
    policy.loader.TripletStream, make_loader  the training stream over curation.store.reader
    policy.train.train, load_policy, plot_curves
    policy.evaluate.evaluate, wilson_interval
See policy/README.md.
"""
