from services.chat.webhooks.process import main

main()
