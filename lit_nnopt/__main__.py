from lit_nnopt.app.main import main

if __name__ == "__main__":
    main()
