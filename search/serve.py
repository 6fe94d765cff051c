"""`python -m search.serve MODEL_URI`: the command's entry; the server is search/deploy/serve.py."""

if __name__ == "__main__":
    from search.cli import run_main
    from search.deploy.serve import main

    run_main(main, fast_exit=True)
