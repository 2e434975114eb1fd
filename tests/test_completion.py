"""`tvp completion`: a shell completion script generated from the parser itself."""


def test_completion_script_knows_the_commands_and_flags(capsys):
    from tvprompt.cli import main

    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "push-to-hub" in script and "--report-to" in script and "--device-map" in script
