"""A large, varied chat prompt set generated from templates, for distilling the draft.

Written for this project; nothing here is taken from the held-out calibration set
(`specmemo_plan/data/calibration_prompts.json`), which is never used for training.
`make_prompts(n, seed, texts)` returns n distinct user messages over eight kinds of
request (writing, roleplay, reasoning, math, coding, extraction, science, humanities)
plus everyday questions; `texts` (paragraphs found on disk) feed the extraction and
summary requests.
"""

from __future__ import annotations

import random

TOPICS = """the water cycle|volcanoes|black holes|the immune system|photosynthesis|plate tectonics|climate change|
renewable energy|electric cars|the printing press|the Roman Empire|ancient Egypt|the Silk Road|the Renaissance|
the Industrial Revolution|the Cold War|the French Revolution|the Ming dynasty|the Aztec empire|the Byzantine Empire|
jazz music|baroque music|impressionist painting|Greek mythology|Norse mythology|Shakespeare's sonnets|haiku|
the stock market|inflation|compound interest|supply and demand|cryptocurrency|personal budgeting|credit scores|
sleep|nutrition|meditation|running a marathon|learning a language|public speaking|time management|remote work|
gardening|composting|beekeeping|baking sourdough bread|making pasta|brewing coffee|fermentation|knitting|
chess openings|the Olympic games|football tactics|rock climbing|sailing|bird watching|astronomy for beginners|
the Moon landing|Mars exploration|satellites|the International Space Station|telescopes|exoplanets|
DNA|vaccines|antibiotics|evolution|dinosaurs|coral reefs|rainforests|deserts|glaciers|ocean currents|earthquakes|
machine learning|neural networks|databases|the internet|cybersecurity|passwords|cloud computing|open source software|
version control|compilers|operating systems|quantum computing|blockchain|robots|3D printing|smartphones|
electricity|magnetism|gravity|light|sound waves|thermodynamics|atoms|chemical reactions|the periodic table|
probability|prime numbers|geometry|calculus|statistics|logic puzzles|game theory|
democracy|human rights|urban planning|public transport|libraries|museums|philosophy of mind|stoicism|ethics|
friendship|parenting|moving to a new city|job interviews|writing a resume|starting a small business|marketing|
customer service|negotiation|teamwork|leadership|volunteering|recycling|pets|dogs|cats|horses|bees|whales|
tea|chocolate|spices|rice|the history of bread|pizza|vegetarian cooking|camping|hiking safety|travel on a budget|
Japan|Brazil|Kenya|Canada|Iceland|India|Italy|Mexico|Egypt|Australia|Norway|Vietnam|Peru|Morocco""".replace("\n", "").split("|")

LANGS = ["Python", "JavaScript", "TypeScript", "Rust", "Go", "C", "C++", "Java", "bash", "SQL", "Ruby", "Kotlin"]
CODE_TASKS = """reverses a string|checks whether a number is prime|counts word frequencies in a text|merges two sorted lists|
finds the largest element of an array|computes the factorial of n|removes duplicates from a list|reads a file line by line|
implements binary search|validates an email address|converts Celsius to Fahrenheit|computes the n-th Fibonacci number|
sorts a list of records by a field|parses a CSV line|flattens a nested list|checks if a string is a palindrome|
implements a stack|implements a queue with two stacks|computes the greatest common divisor|finds the median of a list|
counts vowels in a string|rotates a matrix by 90 degrees|groups words that are anagrams|sums the digits of a number|
generates all permutations of a list|implements a simple LRU cache|retries a function call with backoff|
measures how long a function takes|capitalizes each word of a sentence|finds the second largest number""".replace("\n", "").split("|")
SQL_TASKS = ["lists the ten most recent orders", "counts users per country", "finds products that were never ordered",
             "computes the average salary per department", "returns duplicate email addresses",
             "shows monthly revenue for the last year", "finds customers with more than three orders"]
PEOPLE = ["a pirate captain", "a medieval knight", "a friendly robot", "a detective", "a tour guide in Rome",
          "a wise old wizard", "a nervous intern", "a space station commander", "a chef on a cooking show",
          "a museum curator", "a sports commentator", "a librarian", "a time traveler from 1900",
          "a park ranger", "a fitness coach", "a grumpy cat", "a startup founder", "a ship's navigator"]
AUDIENCES = ["a five-year-old", "a high school student", "a beginner", "an expert", "my grandmother", "a busy manager",
             "a new employee", "a tourist"]
TONES = ["formal", "friendly", "funny", "persuasive", "calm", "enthusiastic", "concise", "poetic"]
FORMS = ["a short poem", "a haiku", "a limerick", "a short story", "a blog post introduction", "a product description",
         "a tweet", "a short speech", "a diary entry", "a letter", "a news headline and summary", "a slogan",
         "a recipe introduction", "a motivational message", "a song chorus", "a movie plot outline"]
NAMES = ["Alice", "Bob", "Carlos", "Dana", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kira", "Liam",
         "Mei", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tariq"]
ITEMS = ["apples", "pencils", "books", "tickets", "cookies", "marbles", "stamps", "eggs", "bottles", "shirts"]


def _writing(r: random.Random) -> str:
    t = r.choice(TOPICS)
    return r.choice([
        f"Write {r.choice(FORMS)} about {t}.",
        f"Write {r.choice(FORMS)} about {t} in a {r.choice(TONES)} tone.",
        f"Write a {r.choice(TONES)} email to {r.choice(['my manager', 'a client', 'my landlord', 'a teacher', 'a colleague', 'my team'])} "
        f"about {r.choice(['a delayed project', 'taking a day off', 'a broken heater', 'a meeting next week', 'a new idea', 'a thank-you'])}.",
        f"Give me five creative title ideas for an article about {t}.",
        f"Write an opening paragraph for a novel set in {r.choice(TOPICS[-14:])}.",
        f"Rewrite this sentence to sound more {r.choice(TONES)}: \"{r.choice(NAMES)} went to the store because we needed {r.choice(ITEMS)}.\"",
        f"Write a short dialogue between {r.choice(NAMES)} and {r.choice(NAMES)} about {t}.",
        f"Write a review of an imaginary book about {t}.",
        f"Draft an invitation to a {r.choice(['birthday party', 'team lunch', 'book club', 'garden party', 'charity run'])}.",
    ])


def _roleplay(r: random.Random) -> str:
    p, t = r.choice(PEOPLE), r.choice(TOPICS)
    return r.choice([
        f"Pretend you are {p}. Introduce yourself.",
        f"You are {p}. Explain {t} to me in character.",
        f"Act as {p} and give me advice about {r.choice(TOPICS)}.",
        f"Imagine you are {p}. Describe a typical day.",
        f"Role-play as {p} who has just discovered {t}. What do you say?",
        f"You are {p}. A customer asks you about {t}. Answer them.",
    ])


def _reasoning(r: random.Random) -> str:
    a, b, c = r.sample(NAMES, 3)
    n, m = r.randint(2, 12), r.randint(2, 9)
    return r.choice([
        f"{a} is taller than {b}, and {b} is taller than {c}. Who is the shortest? Explain your reasoning.",
        f"If all {r.choice(['cats', 'birds', 'engineers', 'poets'])} are {r.choice(['curious', 'busy', 'friendly'])} and {a} is one of them, what can we conclude?",
        f"A train leaves at {r.randint(1, 11)}:{r.choice(['00', '15', '30', '45'])} and the trip takes {n} hours and {m * 5} minutes. When does it arrive?",
        f"{a} has {n} {r.choice(ITEMS)} and gives {b} {min(n, m)} of them. {b} then gives half to {c}. How many does each person have?",
        f"What are the pros and cons of {r.choice(TOPICS)}?",
        f"Compare {r.choice(TOPICS)} and {r.choice(TOPICS)}. What do they have in common?",
        f"Is it a good idea to {r.choice(['learn two languages at once', 'work from home every day', 'buy a used car', 'skip breakfast', 'start a garden'])}? Think it through step by step.",
        f"There are {n} people in a room and each shakes hands with every other person once. How many handshakes happen?",
        "Solve this riddle: " + r.choice(["What has keys but cannot open locks?", "What gets wetter the more it dries?",
                                          "What has a neck but no head?", "What can travel around the world while staying in a corner?"]),
    ])


def _math(r: random.Random) -> str:
    a, b, c = r.randint(2, 99), r.randint(2, 99), r.randint(2, 20)
    name = r.choice(NAMES)
    return r.choice([
        f"What is {a} times {b}?",
        f"Compute {a} + {b} * {c} and explain the order of operations.",
        f"Solve for x: {c}x + {a} = {b + a * c}.",
        f"{name} buys {c} {r.choice(ITEMS)} at ${a / 10:.2f} each. How much does {name} pay in total?",
        f"What is {c}% of {a * 10}?",
        f"A rectangle is {a} cm long and {b} cm wide. What are its area and perimeter?",
        f"Find the average of {a}, {b} and {c}.",
        f"If a price of ${a * 3} is reduced by {c}%, what is the new price?",
        f"A car travels {a * 5} km in {c % 6 + 1} hours. What is its average speed?",
        f"What is the sum of the integers from 1 to {a}?",
        f"Convert {a * 7} minutes to hours and minutes.",
        f"Is {a * b + 1} a prime number? Show how you check.",
        f"Simplify the fraction {a * c}/{b * c}.",
        f"What is the derivative of {c}x^{r.randint(2, 5)} + {a}x?",
        f"Explain how to solve a quadratic equation, using x^2 - {a % 9 + 2}x + {c % 5 + 1} = 0 as an example.",
    ])


def _coding(r: random.Random) -> str:
    lang = r.choice(LANGS)
    if lang == "SQL":
        return f"Write an SQL query that {r.choice(SQL_TASKS)}, given a table {r.choice(['orders', 'users', 'employees', 'products', 'sales'])} with sensible columns."
    task = r.choice(CODE_TASKS)
    return r.choice([
        f"Write a {lang} function that {task}.",
        f"How do I write a program in {lang} that {task}?",
        f"Explain what a {r.choice(['closure', 'pointer', 'class', 'interface', 'recursive function', 'hash map', 'generator', 'thread', 'promise', 'macro'])} is in {lang}, with an example.",
        f"What is the difference between {r.choice(['a list and a tuple', 'a process and a thread', 'stack and heap', 'compile time and run time', 'an array and a linked list', 'TCP and UDP', 'git merge and git rebase'])}?",
        f"Fix the bug: my {lang} code that {task} gives the wrong result for an empty input. What should I check?",
        f"Write unit tests in {lang} for a function that {task}.",
        f"Give me tips for writing clean {lang} code.",
    ])


def _extraction(r: random.Random, texts: list[str]) -> str:
    if texts and r.random() < 0.7:
        text = r.choice(texts)
        words = text.split()
        if len(words) > 90:
            start = r.randint(0, len(words) - 90)
            text = " ".join(words[start:start + 90])
        ask = r.choice(["Summarize the following text in two sentences.", "List the key points of this text.",
                        "Explain this text in simple words.", "What is the main idea of the passage below?",
                        "Extract the important terms from this text and define them.",
                        "Write three questions a reader could ask about this text.", "Rewrite this text more clearly."])
        return f"{ask}\n\n{text}"
    a, b = r.sample(NAMES, 2)
    return r.choice([
        f"Extract the names and dates from this note: \"{a} will meet {b} on {r.choice(['Monday', 'March 3', 'June 12', 'Friday'])} "
        f"to discuss {r.choice(TOPICS)}; {b} brings the slides.\"",
        f"From this sentence, list every number and what it refers to: \"The shop sold {r.randint(5, 90)} {r.choice(ITEMS)} "
        f"and {r.randint(5, 90)} {r.choice(ITEMS)} in {r.randint(2, 9)} days.\"",
        f"Turn this into a JSON object: name {a}, age {r.randint(18, 80)}, city {r.choice(TOPICS[-14:])}, hobby {r.choice(TOPICS)}.",
        f"Classify the sentiment of this review: \"{r.choice(['Great value, I loved it.', 'It broke after a week.', 'Okay, nothing special.', 'Fast delivery but poor quality.'])}\"",
    ])


def _stem(r: random.Random) -> str:
    t = r.choice(TOPICS)
    return r.choice([
        f"Explain {t} to {r.choice(AUDIENCES)}.",
        f"How does {t} work?",
        f"What is {t}? Give a short explanation.",
        f"What are three surprising facts about {t}?",
        f"Why is {t} important?",
        f"Describe the history of {t} in a few paragraphs.",
        f"What are common misconceptions about {t}?",
        f"Give me a step-by-step guide to getting started with {t}.",
        f"What would happen if {r.choice(['the Moon disappeared', 'the Earth stopped spinning', 'water did not expand when it froze', 'there were no bees', 'the internet went down for a week'])}?",
    ])


def _humanities(r: random.Random) -> str:
    t = r.choice(TOPICS)
    return r.choice([
        f"What were the main causes and effects of {t}?",
        f"Write a short essay on the cultural importance of {t}.",
        f"How has {t} changed over the last hundred years?",
        f"What can we learn from {t} today?",
        f"Describe the culture and traditions of {r.choice(TOPICS[-14:])}.",
        f"Who were some important figures connected to {t}, and why?",
        f"Discuss an ethical question related to {t}.",
        f"Give a balanced argument for and against {r.choice(['school uniforms', 'a four-day work week', 'banning cars in city centres', 'homework', 'space tourism', 'social media for teenagers'])}.",
    ])


def _everyday(r: random.Random) -> str:
    t = r.choice(TOPICS)
    return r.choice([
        f"Can you help me plan a weekend trip to {r.choice(TOPICS[-14:])}?",
        f"Give me a {r.choice(['simple', 'quick', 'healthy', 'cheap'])} recipe with {r.choice(['rice', 'eggs', 'chicken', 'lentils', 'potatoes', 'pasta', 'tofu'])}.",
        f"How can I get better at {t}?",
        f"What should I know before I start {r.choice(['a new job', 'learning guitar', 'running', 'a diet', 'saving money', 'studying abroad'])}?",
        f"Make a to-do list for {r.choice(['moving house', 'a birthday party', 'a job search', 'spring cleaning', 'a camping trip'])}.",
        f"Recommend some books about {t}.",
        f"hi! can you tell me something interesting about {t}",
        f"I am bored. Suggest {r.randint(3, 7)} fun things to do at home.",
        f"Tell me a joke about {t}.",
        f"What is a good way to explain {t} to a friend?",
    ])


KINDS = [_writing, _roleplay, _reasoning, _math, _coding, _stem, _humanities, _everyday]


def make_prompts(n: int, seed: int = 0, texts: list[str] | None = None) -> list[str]:
    r = random.Random(seed)
    texts = texts or []
    seen: set[str] = set()
    out: list[str] = []
    tries = 0
    while len(out) < n and tries < n * 20:
        tries += 1
        k = r.randrange(len(KINDS) + 1)
        p = _extraction(r, texts) if k == len(KINDS) else KINDS[k](r)
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out
