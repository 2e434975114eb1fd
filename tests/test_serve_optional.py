"""The serve extra stays optional: `import tvprompt` and `tvp --help` work without the web stack."""

import subprocess
import sys

from .service_utils import env

BLOCK = ("import sys\nfor m in ('fastapi', 'uvicorn', 'sqlalchemy', 'httpx', 'multipart', 'starlette'):\n"
         "    sys.modules[m] = None\n")


def test_core_works_without_serve_dependencies():
    code = BLOCK + (
        "import tvprompt, tvprompt.serve, tvprompt.client\n"
        "from tvprompt.cli import build_parser\n"
        "build_parser()\n"
        "from tvprompt.errors import UsageError\n"
        "try:\n"
        "    tvprompt.serve.create_app()\n"
        "except UsageError as e:\n"
        "    print('create_app:', e)\n"
        "try:\n"
        "    tvprompt.client.PromptClient('http://127.0.0.1:1')\n"
        "except UsageError as e:\n"
        "    print('client:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env())
    assert out.returncode == 0, out.stderr
    assert "create_app: the service needs the 'serve' extra" in out.stdout
    assert "pip install 'tvprompt[serve]'" in out.stdout and "client: the client needs httpx" in out.stdout


def test_serve_commands_say_which_extra_is_missing(tmp_path):
    code = BLOCK + (
        "from tvprompt.cli import main\n"
        f"print(main(['serve', 'token', 'create', '--owner', 'a', '--store', {str(tmp_path)!r}]))\n"
        f"print(main(['serve', '--store', {str(tmp_path)!r}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env())
    assert out.stdout.split() == ["2", "2"], out.stderr
    assert out.stderr.count("needs the 'serve' extra (fastapi is missing): pip install 'tvprompt[serve]'") == 2
    assert "Traceback" not in out.stderr
