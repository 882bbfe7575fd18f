"""The tiny toyworld the driver tests share, and their module's local Ray cluster."""
import ray


def tiny_world(out, n_prompts: int = 24) -> str:
    """Toyworld data, tokenizer and a one-layer base model in ``out``, in seconds."""
    from rayrlhf.driver.toyworld_stage import ToyworldConfig, run_toyworld
    from rayrlhf.models.tiny import TinyModelSpec

    run_toyworld(ToyworldConfig(out=str(out), n_sft=40, n_pref=40, n_prompts=n_prompts, n_eval_prompts=8,
                                vocab_size=300,
                                model=TinyModelSpec(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128)))
    return str(out)


def local_ray(tmp_path_factory, value=None):
    """Module fixture body: a 2-CPU local Ray cluster (yielding ``value``) until the module ends."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield value
    ray.shutdown()


def world_on_local_ray(tmp_path_factory, name: str):
    """Module fixture body: a tiny world, then a 2-CPU local Ray cluster until the module ends."""
    yield from local_ray(tmp_path_factory, tiny_world(tmp_path_factory.mktemp(name)))


def tiny_reward_model(world: str) -> str:
    """``world``/rm: a reward model folder (the base model with a seeded, untrained scalar head),
    loaded by the reward actors as any `rayrlhf rm` export is."""
    import os

    import torch

    from rayrlhf.models.load import export_hf, load_scalar_model
    from rayrlhf.models.tokenizer import load_tokenizer

    out = os.path.join(world, "rm")
    if not os.path.isdir(out):
        tok = load_tokenizer(os.path.join(world, "base_model"))
        torch.manual_seed(0)
        export_hf(load_scalar_model(os.path.join(world, "base_model"), pad_token_id=tok.pad_token_id), tok, out,
                  extra={"score_mean": 0.0, "score_std": 1.0})
    return out
