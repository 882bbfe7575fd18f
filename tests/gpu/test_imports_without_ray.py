"""The GPU machine has torch and transformers but neither Ray nor vLLM: the role classes and
the GPU tests must import there. Checked here, on every machine, with both imports blocked."""
import subprocess
import sys

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('ray', 'vllm'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import tests.gpu.test_roles_on_gpu, rayrlhf.engine.export_cli, rayrlhf.engine.memory, rayrlhf.trainer.loop
print('imported')
"""


def test_gpu_tests_and_roles_import_without_ray_or_vllm():
    out = subprocess.run([sys.executable, "-c", BLOCK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "imported" in out.stdout
