from llm_core.serving.openai.server import main

main()
